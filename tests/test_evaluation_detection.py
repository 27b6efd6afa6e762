"""Detection metrics against pycocotools' COCOeval on the same boxes, a hand-worked VOC case, the Spark path,
and ``evaluate --task detect`` with its report in headless Chromium.

The truth is the real BCCD annotation set (../shared/data/bccd, parsed here with xml.etree); predictions
are made from it with a seeded RNG: boxes jittered, dropped, relabelled, and false ones added. Scores
are distinct multiples of 1e-6 unless a test is about ties, so the two implementations walk the same
precision-recall points and must agree to 1e-6.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from report_browser import assert_real_picture, offline_page

from sparkvision.config import DetectionEvaluationSettings
from sparkvision.evaluation.detection_metrics import (
    ImageInput,
    box_iou,
    evaluate_images,
    evaluate_local,
    match_image,
)

ROOT = Path(__file__).resolve().parents[1]
BCCD = Path(os.environ.get("SPARKVISION_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bccd"
CLASSES = ["Platelets", "RBC", "WBC"]
BOX_TYPE = "array<struct<label:string,score:double,xmin:double,ymin:double,xmax:double,ymax:double>>"
OBJECT_TYPE = "array<struct<label:string,xmin:double,ymin:double,xmax:double,ymax:double,difficult:boolean>>"


# --------------------------------------------------------------------------- data

def read_bccd(limit: int | None = None) -> dict[str, list[dict]]:
    """{image path as a file: URI: true boxes} from the VOC XML files."""
    folder = BCCD / "Annotations"
    if not folder.is_dir():
        pytest.fail(f"the BCCD set is expected at {BCCD} (see ../shared/data/README.md)")
    truth: dict[str, list[dict]] = {}
    for xml in sorted(folder.glob("*.xml"))[:limit]:
        root = ET.parse(xml).getroot()
        path = "file:" + str(BCCD / "JPEGImages" / root.findtext("filename"))
        truth[path] = [
            {"label": obj.findtext("name"),
             **{k: float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")},
             "difficult": obj.findtext("difficult") == "1"}
            for obj in root.iter("object")
        ]
    return truth


class Scores:
    """Distinct scores, multiples of 1e-6 (no ties at the default resolution)."""

    def __init__(self, rng: np.random.Generator, n: int = 200_000):
        self.values = iter((rng.choice(1_000_000, n, replace=False) / 1e6).tolist())

    def __call__(self) -> float:
        return next(self.values)


def jitter(truth: dict[str, list[dict]], seed: int, drop: float = 0.15, relabel: float = 0.05,
           false_per_image: int = 3, sigma: float = 0.08) -> dict[str, list[dict]]:
    """A plausible detector's output: most boxes found with some error, some missed, some invented."""
    rng = np.random.default_rng(seed)
    score = Scores(rng)
    out = {}
    for path, objects in truth.items():
        boxes = []
        for o in objects:
            if rng.random() < drop:
                continue
            w, h = o["xmax"] - o["xmin"], o["ymax"] - o["ymin"]
            dx0, dy0, dx1, dy1 = (rng.normal(0, sigma, 4) * [w, h, w, h]).tolist()
            label = o["label"] if rng.random() > relabel else str(rng.choice(CLASSES))
            boxes.append({"label": label, "score": score(), "xmin": o["xmin"] + dx0, "ymin": o["ymin"] + dy0,
                          "xmax": o["xmax"] + dx1, "ymax": o["ymax"] + dy1})
        for _ in range(int(rng.integers(0, false_per_image + 1))):
            x, y = rng.uniform(0, 500), rng.uniform(0, 380)
            boxes.append({"label": str(rng.choice(CLASSES)), "score": score(), "xmin": x, "ymin": y,
                          "xmax": x + rng.uniform(10, 140), "ymax": y + rng.uniform(10, 100)})
        out[path] = boxes
    return out


# --------------------------------------------------------------------------- pycocotools

class IgnoreAwareCOCOeval(COCOeval):
    """COCOeval that keeps a non-crowd ``ignore`` flag: our ``difficult`` (``_prepare`` sets ignore = iscrowd)."""

    def _prepare(self):
        super()._prepare()
        for truths in self._gts.values():
            for g in truths:
                g["ignore"] = int(g.get("difficult", 0))


def coco_reference(truth: dict[str, list[dict]], predictions: dict[str, list[dict]], classes: list[str],
                   max_dets: int = 100, image_order: list[str] | None = None) -> dict:
    """pycocotools' mAP@[.5:.95], mAP@0.5 and per-class APs, area range 'all', maxDets ``max_dets``."""
    order = image_order or list(truth)
    image_id = {p: i + 1 for i, p in enumerate(order)}
    category = {c: i + 1 for i, c in enumerate(classes)}
    images = [{"id": image_id[p], "file_name": p} for p in order]
    categories = [{"id": category[c], "name": c} for c in classes]

    def annotations(source: dict[str, list[dict]], start: int) -> list[dict]:
        out, n = [], start
        for path, boxes in source.items():
            if path not in image_id:
                continue
            for b in boxes:
                n += 1
                w, h = b["xmax"] - b["xmin"], b["ymax"] - b["ymin"]
                ann = {"id": n, "image_id": image_id[path], "category_id": category[b["label"]],
                       "bbox": [b["xmin"], b["ymin"], w, h], "area": w * h, "iscrowd": 0}
                if "score" in b:
                    ann["score"] = b["score"]
                else:
                    ann["difficult"] = int(b.get("difficult", False))
                out.append(ann)
        return out

    gt, dt = COCO(), COCO()
    gt.dataset = {"images": images, "categories": categories, "annotations": annotations(truth, 0)}
    dt.dataset = {"images": images, "categories": categories, "annotations": annotations(predictions, 10**7)}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt.createIndex()
        ev = IgnoreAwareCOCOeval(gt, dt, "bbox")
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.params.maxDets = [max_dets]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (IoU, recall, class)
    per_class = {}
    for k, c in enumerate(classes):
        p = precision[:, :, k]
        per_class[c] = None if (p < 0).all() else (float(p.mean()), float(p[0].mean()), float(p[5].mean()))
    scored = precision[:, :, [k for k, c in enumerate(classes) if per_class[c] is not None]]
    return {
        "map": float(scored.mean()) if scored.size else None,
        "map50": float(scored[0].mean()) if scored.size else None,
        "map75": float(scored[5].mean()) if scored.size else None,
        "per_class": per_class,
    }


def assert_agrees(result, reference, tol: float = 1e-6) -> None:
    for key in ("map", "map50", "map75"):
        ours, theirs = getattr(result, key), reference[key]
        assert (ours is None) == (theirs is None), key
        if ours is not None:
            assert abs(ours - theirs) <= tol, (key, ours, theirs)
    per_class = {c.label: c for c in result.per_class}
    for label, ref in reference["per_class"].items():
        mine = per_class.get(label)
        if ref is None:
            assert mine is None or mine.ap is None, label
            continue
        assert abs(mine.ap - ref[0]) <= tol and abs(mine.ap50 - ref[1]) <= tol and abs(mine.ap75 - ref[2]) <= tol, (
            label, (mine.ap, mine.ap50, mine.ap75), ref)


@pytest.fixture(scope="module")
def bccd_truth() -> dict[str, list[dict]]:
    truth = read_bccd()
    assert len(truth) == 364 and sum(len(v) for v in truth.values()) == 4888
    return truth


# --------------------------------------------------------------------------- against pycocotools

def test_real_bccd_with_jittered_predictions_matches_pycocotools(bccd_truth):
    predictions = jitter(bccd_truth, seed=1)
    result = evaluate_local(bccd_truth, predictions)
    reference = coco_reference(bccd_truth, predictions, CLASSES)
    assert_agrees(result, reference)
    assert 0.2 < result.map < result.map50 < 1  # a realistic detector, not a degenerate case
    assert result.images == result.evaluated_images == 364
    assert result.truths == 4888 and result.predictions == sum(len(v) for v in predictions.values())
    assert [c.label for c in result.per_class] == CLASSES
    # A second, sloppier detector: same agreement.
    sloppy = jitter(bccd_truth, seed=2, drop=0.4, relabel=0.2, false_per_image=8, sigma=0.2)
    assert_agrees(evaluate_local(bccd_truth, sloppy), coco_reference(bccd_truth, sloppy, CLASSES))


def test_no_predictions_at_all(bccd_truth):
    truth = dict(list(bccd_truth.items())[:40])
    result = evaluate_local(truth, {path: [] for path in truth})
    assert_agrees(result, coco_reference(truth, {}, CLASSES))
    assert result.map == result.map50 == result.voc_map50 == 0.0
    assert result.predictions == 0 and result.at_threshold.recall == 0.0 and result.best_f1 is None
    assert all(c.ap == 0.0 and c.positives > 0 for c in result.per_class)
    # Nothing predicted and no prediction rows: the same zeros, counted as never predicted.
    missing = evaluate_local(truth, {})
    assert missing.map == 0.0 and missing.image_status["no_prediction"] == 40


def test_classes_without_truths_and_images_without_truths(bccd_truth):
    rng = np.random.default_rng(3)
    truth = {p: [o for o in objs if o["label"] != "WBC"] for p, objs in list(bccd_truth.items())[:60]}
    for path in list(truth)[:10]:
        truth[path] = []  # images with no true box at all
    predictions = jitter(bccd_truth, seed=4)
    predictions = {p: predictions[p] for p in truth}
    score = Scores(rng)
    for path in list(truth)[:15]:  # invented boxes of a class nobody annotated
        predictions[path] = predictions[path] + [
            {"label": "Eosinophil", "score": score(), "xmin": 10.0, "ymin": 10.0, "xmax": 60.0, "ymax": 70.0}]
    classes = [*CLASSES, "Eosinophil"]
    result = evaluate_local(truth, predictions)
    reference = coco_reference(truth, predictions, classes)
    assert reference["per_class"]["WBC"] is None and reference["per_class"]["Eosinophil"] is None
    assert_agrees(result, reference)
    per_class = {c.label: c for c in result.per_class}
    assert per_class["WBC"].positives == 0 and per_class["WBC"].ap is None and per_class["WBC"].predictions > 0
    assert per_class["Eosinophil"].predictions == 15 and per_class["Eosinophil"].voc_ap50 is None
    assert result.evaluated_images == 60


def test_crowded_images_and_the_detection_cap():
    """Dense, heavily overlapping truths and more boxes per class than maxDets: greedy order and the cap matter."""
    rng = np.random.default_rng(5)
    score = Scores(rng)
    truth, predictions = {}, {}
    for i in range(6):
        path = f"file:/crowd/{i}.jpg"
        centres = rng.uniform(40, 160, size=(70, 2))  # 70 cells of ~30 px packed into 120 x 120 px
        sizes = rng.uniform(22, 36, size=(70, 2))
        truth[path] = [{"label": "RBC" if k % 5 else "WBC", "xmin": float(cx - w / 2), "ymin": float(cy - h / 2),
                        "xmax": float(cx + w / 2), "ymax": float(cy + h / 2), "difficult": False}
                       for k, ((cx, cy), (w, h)) in enumerate(zip(centres, sizes, strict=True))]
        boxes = []
        for o in truth[path]:
            for _ in range(2):  # two candidate boxes per cell, like a detector before NMS
                j = rng.normal(0, 4, 4)
                boxes.append({"label": o["label"], "score": score(), "xmin": o["xmin"] + j[0],
                              "ymin": o["ymin"] + j[1], "xmax": o["xmax"] + j[2], "ymax": o["ymax"] + j[3]})
        predictions[path] = boxes
    iou = box_iou(np.array([[o[k] for k in ("xmin", "ymin", "xmax", "ymax")] for o in truth["file:/crowd/0.jpg"]]),
                  np.array([[o[k] for k in ("xmin", "ymin", "xmax", "ymax")] for o in truth["file:/crowd/0.jpg"]]))
    assert (np.triu(iou, 1) > 0.3).sum() > 20  # truly crowded: many truths overlap each other
    for cap in (100, 30):
        result = evaluate_local(truth, predictions, settings=DetectionEvaluationSettings(max_detections=cap))
        assert_agrees(result, coco_reference(truth, predictions, ["RBC", "WBC"], max_dets=cap))
    # 112 RBC boxes per image, capped at 100 (COCO's maxDets) and then at 30 per image and class.
    assert evaluate_local(truth, predictions).capped_predictions == 6 * (112 - 100)
    assert result.capped_predictions == 6 * ((112 - 30) + (28 - 28))


def test_difficult_truths_are_ignored_like_pycocotools_ignore(bccd_truth):
    rng = np.random.default_rng(6)
    truth = {p: [{**o, "difficult": bool(rng.random() < 0.2)} for o in objs]
             for p, objs in list(bccd_truth.items())[:120]}
    predictions = jitter({p: [{k: v for k, v in o.items()} for o in objs] for p, objs in truth.items()}, seed=7)
    result = evaluate_local(truth, predictions)
    assert_agrees(result, coco_reference(truth, predictions, CLASSES))
    difficult = sum(o["difficult"] for objs in truth.values() for o in objs)
    assert result.difficult_truths == difficult > 50
    assert sum(c.positives for c in result.per_class) == result.truths - difficult


def test_failed_predictions_count_their_truths_as_missed(bccd_truth):
    truth = dict(list(bccd_truth.items())[:50])
    predictions = jitter(truth, seed=8)
    failed = list(truth)[:7]
    errors = {p: "corrupt: cannot decode" for p in failed[:5]} | {p: "timeout: model" for p in failed[5:]}
    kept = {p: b for p, b in predictions.items() if p not in errors}
    result = evaluate_local(truth, kept, prediction_errors=errors)
    # pycocotools sees those images with their truths and no boxes.
    assert_agrees(result, coco_reference(truth, kept, CLASSES))
    assert result.image_status["prediction_error"] == 7 and result.evaluated_images == 50
    assert result.prediction_error_kinds == {"corrupt": 5, "timeout": 2}
    assert result.missed_in_failed_images == sum(len(truth[p]) for p in failed)
    worse = evaluate_local(truth, predictions)
    assert result.map < worse.map  # dropping the failed images' truths would have hidden the failures


# --------------------------------------------------------------------------- ties

def test_tied_scores_count_as_one_step_unlike_pycocotools_order():
    """Tied boxes are added together. pycocotools walks them in image order; when the false positives
    come first it builds the same curve, when the true positives come first its AP is higher."""
    truth = {"file:/a.jpg": [], "file:/b.jpg": []}
    predictions = {"file:/a.jpg": [], "file:/b.jpg": []}
    for k in range(4):  # b: four found cells, all scored 0.5
        box = {"label": "RBC", "xmin": 50.0 * k, "ymin": 0.0, "xmax": 50.0 * k + 40, "ymax": 40.0}
        truth["file:/b.jpg"].append({**box, "difficult": False})
        predictions["file:/b.jpg"].append({**box, "score": 0.5})
    for k in range(3):  # a: three false positives, also 0.5, and one found cell at 0.9
        predictions["file:/a.jpg"].append({"label": "RBC", "score": 0.5, "xmin": 300.0 + 50 * k, "ymin": 300.0,
                                           "xmax": 340.0 + 50 * k, "ymax": 340.0})
    truth["file:/a.jpg"].append({"label": "RBC", "xmin": 0.0, "ymin": 200.0, "xmax": 40.0, "ymax": 240.0,
                                 "difficult": False})
    predictions["file:/a.jpg"].append({"label": "RBC", "score": 0.9, "xmin": 0.0, "ymin": 200.0, "xmax": 40.0,
                                       "ymax": 240.0})
    ours = evaluate_local(truth, predictions)
    reversed_input = evaluate_local(dict(reversed(truth.items())), {p: b[::-1] for p, b in predictions.items()})
    assert ours.map50 == reversed_input.map50 and ours.voc_map50 == reversed_input.voc_map50
    fp_first = coco_reference(truth, predictions, ["RBC"], image_order=["file:/a.jpg", "file:/b.jpg"])
    tp_first = coco_reference(truth, predictions, ["RBC"], image_order=["file:/b.jpg", "file:/a.jpg"])
    assert abs(ours.map50 - fp_first["map50"]) < 1e-12
    assert tp_first["map50"] > ours.map50 + 0.05
    # Hand-worked: points (recall 0.2, precision 1) and (1.0, 5/8): 21 recall points at 1, 80 at 5/8.
    assert ours.map50 == pytest.approx((21 + 80 * 5 / 8) / 101, abs=1e-12)
    # VOC all-point: 0.2 * 1 + 0.8 * 5/8.
    assert ours.voc_map50 == pytest.approx(0.2 + 0.8 * 5 / 8, abs=1e-12)


def test_score_resolution_merges_near_ties():
    truth = {"file:/a.jpg": [{"label": "x", "xmin": 0.0, "ymin": 0.0, "xmax": 10.0, "ymax": 10.0}]}
    predictions = {"file:/a.jpg": [
        {"label": "x", "score": 0.7000004, "xmin": 0.0, "ymin": 0.0, "xmax": 10.0, "ymax": 10.0},
        {"label": "x", "score": 0.7000001, "xmin": 50.0, "ymin": 50.0, "xmax": 60.0, "ymax": 60.0},
    ]}
    fine = evaluate_local(truth, predictions, settings=DetectionEvaluationSettings(score_resolution=1e-9))
    coarse = evaluate_local(truth, predictions)
    assert fine.map50 == pytest.approx(1.0)  # the true positive first: recall 1 at precision 1
    assert coarse.map50 == pytest.approx(0.5)  # one step of both: recall 1 at precision 1/2
    assert coarse.pr_curves["x"]["score"] == [0.7]


# --------------------------------------------------------------------------- hand-worked

def _box(label, x0, y0, x1, y1, **extra):
    return {"label": label, "xmin": float(x0), "ymin": float(y0), "xmax": float(x1), "ymax": float(y1), **extra}


def test_voc_and_coco_ap_on_a_hand_worked_case():
    """One class, two images. G2 overlaps G1; p2's best truth is G2, already taken by p1: the VOC devkit calls
    p2 a false positive, COCO gives it G1 (IoU 0.739). p3 sits on a difficult truth: ignored by both."""
    truth = {
        "file:/1.jpg": [_box("cell", 0, 0, 10, 10, difficult=False),  # G1
                        _box("cell", 2, 0, 12, 10, difficult=False),  # G2, IoU(G1, G2) = 2/3
                        _box("cell", 30, 30, 40, 40, difficult=True)],  # G3
        "file:/2.jpg": [_box("cell", 0, 0, 10, 10, difficult=False)],  # G4
    }
    predictions = {
        "file:/1.jpg": [_box("cell", 2, 0, 12, 10, score=0.9),  # p1: G2 exactly
                        _box("cell", 1.5, 0, 11.5, 10, score=0.8),  # p2: IoU 0.905 with G2, 0.739 with G1
                        _box("cell", 30, 30, 40, 40, score=0.7),  # p3: on the difficult G3
                        _box("cell", 50, 50, 60, 60, score=0.6)],  # p4: nothing
        "file:/2.jpg": [_box("cell", 0, 0, 10, 10, score=0.5)],  # p5: G4
    }
    match = match_image(truth["file:/1.jpg"], predictions["file:/1.jpg"])
    assert match.outcome[:, 0].tolist() == [1, 1, -1, 0]  # COCO at 0.5: TP, TP, ignored, FP
    assert match.outcome[:, -1].tolist() == [1, 0, -1, 0]  # VOC: TP, FP (G2 taken), ignored, FP
    result = evaluate_local(truth, predictions, settings=DetectionEvaluationSettings(score_threshold=0.65))
    # VOC: TP FP FP TP over 3 positives -> recall 1/3 at precision 1, then 2/3 at 1/2: AP = 1/3 + 1/3 * 1/2.
    assert result.voc_map50 == pytest.approx(0.5, abs=1e-12)
    # COCO at 0.5: TP TP FP TP -> recall 2/3 at precision 1 (67 recall points), then 1 at 3/4 (34 points).
    assert result.map50 == pytest.approx((67 + 34 * 0.75) / 101, abs=1e-12)
    assert_agrees(result, coco_reference(truth, predictions, ["cell"]))
    (cell,) = result.per_class
    assert (cell.positives, cell.difficult, cell.predictions) == (3, 1, 5)
    at = cell.at_threshold  # boxes >= 0.65: p1, p2 found, p3 ignored
    assert (at.tp, at.fp, at.fn, at.precision, at.recall) == (2, 0, 1, 1.0, pytest.approx(2 / 3))
    best = cell.best_f1  # all five boxes: 3 TP, 1 FP -> F1 = 6 / 7
    assert best.score == 0.5 and best.f1 == pytest.approx(6 / 7) and best.fn == 0
    assert result.pr_curves["cell"]["recall"] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3, 1.0], abs=1e-6)


def test_invalid_boxes_are_counted_and_left_out():
    truth = {"file:/a.jpg": [_box("x", 0, 0, 10, 10), _box("x", 10, 10, 5, 5), _box(None, 0, 0, 1, 1)]}
    predictions = {"file:/a.jpg": [_box("x", 0, 0, 10, 10, score=0.9), _box("x", 0, 0, 10, 10, score=float("nan")),
                                   {"label": "x", "score": 0.5, "xmin": None, "ymin": 0, "xmax": 1, "ymax": 1}]}
    result = evaluate_images([ImageInput("file:/a.jpg", truth["file:/a.jpg"], predictions["file:/a.jpg"])])
    assert (result.invalid_truths, result.invalid_predictions) == (2, 2)
    assert (result.truths, result.predictions, result.map) == (1, 1, 1.0)


def test_pr_curves_of_many_classes_are_small_multiples():
    from sparkvision.evaluation.detection_report import MAX_CURVE_CLASSES, plot_pr_curves

    rng = np.random.default_rng(11)
    classes = [f"class{k:02d}" for k in range(30)]
    truth = {f"file:/{i}.jpg": [_box(classes[(i + k) % 30], 20 * k, 0, 20 * k + 15, 15) for k in range(8)]
             for i in range(40)}
    predictions = jitter(truth, seed=12, relabel=0.0)
    for boxes in predictions.values():
        for b in boxes:
            b["label"] = b["label"] if rng.random() > 0.2 else str(rng.choice(classes))
    result = evaluate_local(truth, predictions)
    assert len(result.pr_curves) == 30 and all(len(c["recall"]) <= 200 for c in result.pr_curves.values())
    uri = plot_pr_curves(result)
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    rows = -(-MAX_CURVE_CLASSES // 4)
    assert image.height > 150 * rows and image.width > 900  # a grid of panels, not 30 lines in one


def test_boxes_are_drawn_where_they_are_in_the_displayed_image(tmp_path):
    """Found, missed, correct and false boxes in their colours, on a photo stored sideways (EXIF orientation 6)."""
    from sparkvision.evaluation.detection_report import COLOURS, draw_boxes

    photo = Image.open(BCCD / "JPEGImages" / "BloodImage_00000.jpg").convert("RGB")  # 640 x 480
    stored = photo.rotate(90, expand=True)  # stored 480 x 640; orientation 6 turns it back to 640 x 480
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    truths = [_box("WBC", 40, 40, 200, 200, found=True), _box("RBC", 400, 60, 600, 220, found=False)]
    boxes = [_box("WBC", 60, 260, 220, 420, score=0.9, outcome="tp"),
             _box("RBC", 420, 260, 600, 420, score=0.6, outcome="fp")]
    uri = draw_boxes(buffer.getvalue(), truths, boxes, size=320)
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")).astype(int)
    assert drawn.shape == (240, 320, 3)  # as displayed (landscape), longest side 320: a scale of 1/2
    for box, key in zip(truths + boxes, ("found", "missed", "tp", "fp"), strict=True):
        colour = np.array([int(COLOURS[key][i:i + 2], 16) for i in (1, 3, 5)])
        x, y = round(box["xmin"] / 2), round((box["ymin"] + box["ymax"]) / 4)  # the middle of the left edge
        assert np.abs(drawn[y - 2:y + 3, x - 1:x + 2] - colour).sum(axis=2).min() < 60, key


# --------------------------------------------------------------------------- Spark

def _truth_frame(spark, truth, extra=()):
    rows = [(p, objs, None) for p, objs in truth.items()] + list(extra)
    return spark.createDataFrame(rows, f"path string, objects {OBJECT_TYPE}, error string")


def _prediction_frame(spark, predictions, extra=()):
    rows = [(p, boxes, None) for p, boxes in predictions.items()] + list(extra)
    return spark.createDataFrame(rows, f"path string, boxes {BOX_TYPE}, error string")


def test_spark_path_equals_the_pure_result(spark, bccd_truth):
    from sparkvision.evaluation.detection import evaluate_detections, worst_images

    truth = dict(list(bccd_truth.items())[:40])
    predictions = jitter(truth, seed=9)
    paths = list(truth)
    errors = {paths[0]: "corrupt: bad data"}
    del predictions[paths[0]]
    del predictions[paths[1]]  # never predicted
    predictions["file:/elsewhere.jpg"] = [_box("RBC", 0, 0, 5, 5, score=0.4)]  # not in the truth
    # The truth without a difficult field (a plain COCO-like frame), an annotation error, a duplicated path.
    truth_rows = [(p, [{k: v for k, v in o.items() if k != "difficult"} for o in objs], None)
                  for p, objs in truth.items()]
    truth_rows += [("file:/broken.jpg", None, "annotation: unparsable XML"), (paths[5], [], None)]
    truth_df = spark.createDataFrame(
        truth_rows, "path string, objects array<struct<label:string,xmin:double,ymin:double,xmax:double,"
                    "ymax:double>>, error string")
    pred_df = _prediction_frame(spark, predictions, [(paths[0], None, errors[paths[0]])]).repartition(3)
    result = evaluate_detections(pred_df, truth_df)
    local = evaluate_images(
        [ImageInput(p, truth.get(p), predictions.get(p), truth_rows=1 + (p == paths[5]),
                    prediction_rows=int(p in predictions or p in errors), prediction_error=errors.get(p))
         for p in paths]
        + [ImageInput("file:/broken.jpg", None, None, prediction_rows=0, truth_error="annotation: unparsable XML"),
           ImageInput("file:/elsewhere.jpg", None, predictions["file:/elsewhere.jpg"], truth_rows=0)]
    )
    assert result.to_dict() == local.to_dict()
    assert result.image_status == {"ok": 38, "prediction_error": 1, "no_prediction": 1, "truth_error": 1,
                                   "no_truth": 1}
    assert result.truth_error_kinds == {"annotation": 1} and result.unjudged_predictions == 1
    assert result.duplicate_truth_rows == 1 and result.images == 42
    assert_agrees(result, coco_reference(truth, {p: b for p, b in predictions.items() if p in truth}, CLASSES))

    worst = worst_images(pred_df, truth_df, 5)
    assert len(worst) == 5
    f1 = [w["f1"] for w in worst]
    assert f1 == sorted(f1)
    match = match_image(truth[worst[0]["path"]], predictions[worst[0]["path"]])
    tp, fp, fn = match.operating_point(0.5)
    assert (worst[0]["tp"], worst[0]["fp"], worst[0]["fn"]) == (tp, fp, fn)
    assert sum(not t["found"] for t in worst[0]["truths"]) == fn
    assert all(b["score"] >= 0.5 for w in worst for b in w["boxes"])


@pytest.mark.browser
def test_evaluate_detect_cli_writes_metrics_and_a_report_that_renders(spark, cli, tmp_path):
    from sparkvision.evaluation.detection import load_truth

    # The truth is the real VOC test list, read by the VOC source; predictions are made from its rows.
    voc_test = str(BCCD / "ImageSets" / "Main" / "test.txt")
    truth = {r["path"]: [o.asDict() for o in r["objects"]]
             for r in load_truth(spark, voc_test).select("path", "objects").collect()}
    assert len(truth) == 72 and all(p.endswith(".jpg") for p in truth)
    predictions = jitter(truth, seed=10, drop=0.3, false_per_image=4)
    first = list(truth)[0]
    _prediction_frame(spark, {p: b for p, b in predictions.items() if p != first},
                      [(first, None, "corrupt: cannot decode")]).write.parquet(str(tmp_path / "predictions"))
    out = tmp_path / "report"
    code, stdout = cli("evaluate", "--task", "detect", "--predictions", tmp_path / "predictions", "--truth", voc_test,
                       "--out", out, "--gallery", 6)
    assert code == 0
    printed = json.loads(stdout)
    assert printed == json.loads((out / "metrics.json").read_text())
    local = evaluate_local(truth, {p: b for p, b in predictions.items() if p != first},
                           prediction_errors={first: "corrupt: cannot decode"})
    assert printed["map"] == pytest.approx(local.map, abs=1e-12)
    assert printed["voc_map50"] == pytest.approx(local.voc_map50, abs=1e-12)
    assert printed["image_status"] == {"ok": 71, "prediction_error": 1, "no_prediction": 0, "truth_error": 0,
                                       "no_truth": 0}
    assert printed["task"] == "detect" and printed["source"]["truth"] == voc_test
    assert set(printed["pr_curves"]) == set(CLASSES)

    with offline_page(out / "report.html") as page:
        curves = page.locator("#pr-curves-img")
        curves.scroll_into_view_if_needed()
        assert curves.is_visible() and curves.evaluate("img => img.complete && img.naturalWidth") > 300
        assert page.locator("#per-class-table tbody tr").count() == 3
        thumbs = page.locator("#gallery img.thumb")
        assert thumbs.count() == 6
        widths = thumbs.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        assert all(w == 480 for w in widths), widths  # 640 x 480 photos drawn at 480 px
        captions = page.locator("#gallery figcaption").all_inner_texts()
        f1 = [float(c.split("F1 ")[1].split()[0]) for c in captions]
        assert f1 == sorted(f1)  # worst first
        summary = page.locator("#summary").inner_text()
        assert "mAP@[.5:.95]" in summary and "whose prediction failed" in summary
        page.screenshot(path=str(out / "report.png"), full_page=True)
        page.locator("#gallery").screenshot(path=str(out / "gallery.png"))
    for name, min_colours in (("report.png", 50), ("gallery.png", 200)):
        assert_real_picture(out / name, min_colours)
    # The drawn boxes are there: the gallery holds the colours of missed (amber) and predicted (blue) boxes.
    gallery = np.asarray(Image.open(out / "gallery.png").convert("RGB")).reshape(-1, 3).astype(int)
    for colour in ((0xF5, 0x9E, 0x0B), (0x25, 0x63, 0xEB)):
        assert (np.abs(gallery - colour).sum(axis=1) < 40).sum() > 100, colour


def test_evaluate_detect_needs_truth_with_boxes(spark, cli, tmp_path, caplog):
    _prediction_frame(spark, {"file:/a.jpg": []}).write.parquet(str(tmp_path / "p"))
    # Without --truth: a usage error; --truth on a classification evaluation too.
    assert cli("evaluate", "--task", "detect", "--predictions", tmp_path / "p", "--out", tmp_path / "r")[0] == 2
    assert cli("evaluate", "--predictions", tmp_path / "p", "--truth", tmp_path / "p", "--out", tmp_path / "r")[0] == 2
    spark.createDataFrame([("file:/a.jpg", "x")], "path string, label string").write.parquet(
        str(tmp_path / "plain.parquet"))
    code, _ = cli("evaluate", "--task", "detect", "--predictions", tmp_path / "p", "--truth",
                  tmp_path / "plain.parquet", "--out", tmp_path / "r")
    assert code == 1 and "no true boxes" in caplog.text
    assert not Path(tmp_path / "r" / "metrics.json").exists()
