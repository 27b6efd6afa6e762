"""Detection: Spark ``detect`` end to end vs ONNX Runtime alone, and accuracy on the BCCD test list.

Side by side in this one process, on the same 364 BCCD photos (640x480 JPEG) and cores:

* **ceiling**: ONNX Runtime alone on tensors letterboxed beforehand, as many intra-op
  threads as cores, the graph only (no decoding, no NMS): the model's own speed.
* **sparkvision**: ``load_images`` on the VOC folder -> ``ObjectDetector`` (decode,
  letterbox, ONNX Runtime with 1 thread per task, one task per core, NMS, boxes mapped
  back to the photo) -> a ``noop`` sink through Spark ``local[cores]``; warm runs.

Accuracy: the model directory's detections on ``ImageSets/Main/test.txt`` scored by
``sparkvision evaluate --task detect``'s metrics (COCO mAP@[.5:.95], mAP@0.5, VOC AP@0.5
per class). The model is the one ``SPARKVISION_BENCH_DETECTOR`` names, or
``models/bccd`` (trained by the README's command: ``sparkvision train --task detect``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from common import SHARED_DATA, Result, table, transform_runs

TITLE = "Detection: Spark detect vs ONNX Runtime alone; BCCD accuracy"
ROOT = Path(__file__).resolve().parents[1]


def _bccd() -> Path:
    return SHARED_DATA / "bccd"


def _model_dir() -> Path:
    return Path(os.environ.get("SPARKVISION_BENCH_DETECTOR", ROOT / "models" / "bccd"))


def _ceiling(files: list[Path], model_dir: Path, threads: int, batch: int, repeat: int) -> float:
    from sparkvision.detection.runner import DetectorRunner

    runner = DetectorRunner.from_model_dir(model_dir, threads=threads, batch_size=batch)
    tensor = runner.preprocess([f.read_bytes() for f in files]).tensor
    runner.run(tensor[: batch * 2], ["boxes", "scores"])  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        runner.run(tensor, ["boxes", "scores"])
        best = min(best, time.perf_counter() - start)
    return len(tensor) / best


def _spark(spark, folder: Path, model_dir: Path, rows: int, repeat: int) -> tuple[float, list[float]]:
    from sparkvision.ml.detector import ObjectDetector

    return transform_runs(spark, ObjectDetector(modelDir=str(model_dir), scoreThreshold=0.05), folder, rows, repeat)


def _accuracy(spark, bccd: Path, model_dir: Path, work: Path) -> dict:
    from sparkvision.evaluation.detection import evaluate_detections
    from sparkvision.inference.predict import predict
    from sparkvision.io import load_images

    truth = load_images(spark, str(bccd / "ImageSets" / "Main" / "test.txt"))
    out = work / "detections"
    from sparkvision.detection.postprocess import DecodeSettings

    predict(spark, model_dir, truth, str(out), overwrite=True, detection=DecodeSettings(score_threshold=0.05))
    result = evaluate_detections(spark.read.parquet(str(out)), truth)
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


def _median_epoch_seconds(model_dir: Path) -> float:
    import csv
    import statistics

    with open(model_dir / "curves.csv", newline="") as handle:
        return statistics.median(float(r["epoch_seconds"]) for r in csv.DictReader(handle))


def run(quick: bool) -> Result:
    import tempfile

    from sparkvision.config import SparkSettings
    from sparkvision.session import get_spark

    bccd = _bccd()
    model_dir = _model_dir()
    if not (model_dir / "sparkvision_model.json").is_file():
        raise FileNotFoundError(f"no detector at {model_dir}: train one first (README, Detection) or set "
                                "SPARKVISION_BENCH_DETECTOR")
    cores = os.cpu_count() or 2
    files = sorted((bccd / "JPEGImages").glob("*.jpg"))
    if quick:
        files = files[::8]
    repeat = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for f in files:
            os.symlink(f, folder / f.name)
        ceiling = _ceiling(files, model_dir, cores, 8, repeat)
        spark = get_spark(SparkSettings(master=f"local[{cores}]", app_name="bench-detect"))
        first, warm = _spark(spark, folder, model_dir, len(files), repeat)
        warm_rate = len(files) / min(warm)
        accuracy = _accuracy(spark, bccd, model_dir, Path(tmp))
    card = json.loads((model_dir / "sparkvision_model.json").read_text())
    per_class = accuracy.get("per_class") or []
    metrics = card.get("metrics", {})
    lines = [
        f"Photos: {len(files)} BCCD JPEGs (640x480), model `{model_dir.name}` "
        f"({card.get('architecture')}, input {card['preprocess']['size']}), {cores} cores.",
        "",
        table(["path", "images/s", "vs ONNX Runtime alone"], [
            ["ONNX Runtime alone, pre-letterboxed tensors, graph only", ceiling, 1.0],
            ["Spark detect end to end (decode, letterbox, ORT, NMS), warm", warm_rate, warm_rate / ceiling],
            ["Spark detect, first run (workers start, model loads)", len(files) / first, len(files) / first / ceiling],
        ]),
        "",
        "Accuracy on the BCCD test list (72 images; pycocotools-equivalent COCO metrics, VOC all-point AP):",
        "",
        table(["class", "test boxes", "AP@[.5:.95]", "AP@0.5", "VOC AP@0.5"],
              [[c["label"], c["positives"], c["ap"], c["ap50"], c["voc_ap50"]] for c in per_class]
              + [["**mean**", sum(c["positives"] for c in per_class), accuracy.get("map"), accuracy.get("map50"),
                  accuracy.get("voc_map50")]]),
        "",
        f"Training (the model directory's card and curves.csv): {metrics.get('epochs_run')} epochs, "
        f"exported epoch {metrics.get('exported_epoch')}, median {_median_epoch_seconds(model_dir):.0f} s per epoch "
        f"on this machine.",
    ]
    return Result("\n".join(lines), {"ceiling_img_s": ceiling, "spark_warm_img_s": warm_rate,
                                     "spark_first_s": first, "ratio": warm_rate / ceiling, "accuracy": accuracy,
                                     "per_class": per_class, "training": card.get("metrics", {})})
