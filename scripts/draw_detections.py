"""Draw a detector's boxes (score >= 0.3) next to the true ones on two BCCD test photos (the README's picture).

    .venv/bin/python scripts/draw_detections.py MODEL_DIR docs/detection_bccd.jpg
"""
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image, ImageDraw

from sparkvision.detection.postprocess import DecodeSettings
from sparkvision.detection.runner import DetectorRunner

model = sys.argv[1]
out = sys.argv[2]
root = Path(__file__).resolve().parents[1]
bccd = Path(os.environ.get("SPARKVISION_SHARED_DATA", root.parent / "shared" / "data")) / "bccd"
ids = (bccd / "ImageSets/Main/test.txt").read_text().split()[:2]
runner = DetectorRunner.from_model_dir(model, settings=DecodeSettings(score_threshold=0.3))
colours = {"RBC": (220, 40, 40), "WBC": (40, 90, 230), "Platelets": (20, 160, 60)}
tiles = []
for i in ids:
    data = (bccd / "JPEGImages" / f"{i}.jpg").read_bytes()
    recs = runner.detect_records([data])[0][0]
    img = Image.open(bccd / "JPEGImages" / f"{i}.jpg").convert("RGB")
    truth = img.copy()
    for o in ET.parse(bccd / "Annotations" / f"{i}.xml").getroot().iter("object"):
        b = o.find("bndbox")
        c = [float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
        ImageDraw.Draw(truth).rectangle(c, outline=colours[o.find("name").text.strip()], width=3)
    d = ImageDraw.Draw(img)
    for r in recs:
        d.rectangle([r["xmin"], r["ymin"], r["xmax"], r["ymax"]], outline=colours[r["label"]], width=3)
        d.text((r["xmin"] + 3, r["ymin"] + 2), f"{r['label']} {r['score']:.2f}", fill=colours[r["label"]])
    tiles.append((truth, img))
w, h = 640, 480
canvas = Image.new("RGB", (2 * w + 10, len(tiles) * (h + 10) - 10), "white")
for k, (t, p) in enumerate(tiles):
    canvas.paste(t, (0, k * (h + 10)))
    canvas.paste(p, (w + 10, k * (h + 10)))
canvas = canvas.resize((canvas.width // 2, canvas.height // 2), Image.Resampling.LANCZOS)
canvas.convert("RGB").save(out, quality=85, optimize=True)
print(out, [len(runner.detect_records([(bccd / 'JPEGImages' / f'{i}.jpg').read_bytes()])[0][0]) for i in ids])
