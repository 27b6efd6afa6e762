"""Object-detection metrics without Spark: match boxes per image, count, and turn the counts into mAP.

Two halves, so that the Spark job (:mod:`sparkvision.evaluation.detection`) and a plain Python
caller share one implementation:

* :func:`match_image` matches one image's predicted boxes to its true boxes, and
  :func:`count_images` turns the matches of many images into *counts*: per (class, rounded
  score) the boxes and their true and false positives under each matching rule, per class the
  positives, per image status the images. Counts add up, so Spark sums them over any number of
  images and only the sums (at most classes x score values rows) reach the driver.
* :func:`metrics_from_counts` turns summed counts into every metric.

Matching
--------
Boxes are ``(xmin, ymin, xmax, ymax)`` in continuous pixel coordinates; IoU is intersection over
union with areas ``(xmax - xmin) * (ymax - ymin)``, as pycocotools computes it for its
``[x, y, w, h]`` boxes. A box only matches a true box of its own label. Per image and label the
boxes are taken highest score first (a stable sort: equal scores keep their input order), at most
``max_detections`` of them (pycocotools' ``maxDets``; the rest are counted in ``capped``).

* **COCO rule** at each IoU threshold 0.50, 0.55, ..., 0.95 (pycocotools' ``evaluateImg``): a box
  goes to the still unmatched true box with the highest IoU >= the threshold, preferring a true box
  that is not difficult; among equal IoUs the later true box wins, as in pycocotools. A box
  matched to a difficult truth is ignored (neither true nor false positive), and difficult truths
  are not positives: pycocotools' ``ignore`` flag on a box that is not a crowd (``iscrowd=0``).
  COCO crowd regions arrive as difficult boxes (:mod:`sparkvision.io.annotations`) and are scored
  the same way, which differs from pycocotools' crowd rule (a crowd absorbs any number of boxes,
  with IoU over the box's own area) only on sets that have crowds.
* **VOC rule** at IoU 0.5 (the devkit's ``voc_eval``): a box goes to the true box with the highest
  IoU (the first of equal ones), whether or not that one is taken. IoU must exceed 0.5. If that true
  box is difficult the box is ignored; if it is already taken the box is a false positive. IoU has
  no +1 pixel in widths and heights: boxes here are continuous coordinates, and the VOC source
  already reads the devkit's inclusive pixel indices as ``xmin - 1`` (:mod:`sparkvision.io.annotations`),
  so a true box's width is the devkit's ``xmax - xmin + 1``.

Average precision
-----------------
* **COCO AP** at one threshold is pycocotools' 101-point interpolated AP: at recall 0, 0.01, ..., 1
  the precision envelope (the best precision at that recall or beyond) at the first point whose
  recall reaches it, 0 past the last recall, averaged. ``map`` (mAP@[.5:.95]) averages it over the
  ten thresholds and the classes, ``map50`` and ``map75`` over the classes at 0.5 and 0.75.
* **VOC AP** is the all-point interpolated AP of VOC2010 and later: the area under the
  precision envelope, with the VOC rule's matches.
* Only classes with at least one positive (a true box that is not difficult) enter the means, as in
  both references; a class that is only predicted is listed with its boxes and an AP of None.
* Precision, recall and F1 (``at_threshold``, ``best_f1``) use the COCO rule at IoU 0.5.

Ties
----
Scores are rounded to ``score_resolution`` (1e-6 by default) and boxes with the same rounded score
make one step of the precision-recall curve: their true and false positives are added together,
whatever their order. pycocotools walks tied boxes one at a time in the order they happen to
have (image by image, then input order), so on ties its curve has intermediate points and its AP
depends on that order; here it does not. Without ties at that resolution both build the same
points, and the APs agree to float rounding.

Images
------
An image is one ``path``. Its status says whether it is judged:

* ``ok``: a truth row and a prediction row, neither with an error;
* ``prediction_error``: the prediction row has an ``error``. The image is judged with no boxes:
  its true boxes count as missed positives, so failures lower recall instead of vanishing;
* ``no_prediction``: a truth row but no prediction row; judged like ``prediction_error``;
* ``truth_error``: the truth row has an error (an annotation that could not be read): not judged,
  its boxes are counted in ``unjudged_predictions``;
* ``no_truth``: predictions for a path the truth does not have: not judged, likewise counted.

Boxes with a missing label, a non-finite score or coordinate, or ``xmax < xmin`` / ``ymax <
ymin`` are counted in ``invalid_predictions`` / ``invalid_truths`` and left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sparkvision.config import DetectionEvaluationSettings

#: pycocotools' IoU thresholds and recall points, built the same way so that floats compare equal.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
VOC_IOU = 0.5
#: Matching rules, the columns of an outcome matrix: the ten COCO thresholds, then VOC at 0.5.
RULES = tuple(f"coco@{t:.2f}" for t in COCO_IOU_THRESHOLDS) + ("voc@0.50",)
N_RULES = len(RULES)
VOC_RULE = N_RULES - 1
COCO50, COCO75 = 0, 5

TP, FP, IGNORED = 1, 0, -1

OK, PREDICTION_ERROR, NO_PREDICTION, TRUTH_ERROR, NO_TRUTH = (
    "ok", "prediction_error", "no_prediction", "truth_error", "no_truth",
)
STATUSES = (OK, PREDICTION_ERROR, NO_PREDICTION, TRUTH_ERROR, NO_TRUTH)
JUDGED = (OK, PREDICTION_ERROR, NO_PREDICTION)

BOX, TRUTH, IMAGE = "box", "truth", "image"
TP_COLUMNS = tuple(f"tp{j}" for j in range(N_RULES))
FP_COLUMNS = tuple(f"fp{j}" for j in range(N_RULES))
#: The columns of a counts frame: grouping keys, then the counts that add up.
COUNT_KEYS = ("kind", "label", "score_key", "status", "error_kind")
COUNT_SUMS = (
    "n", "positives", "difficult", *TP_COLUMNS, *FP_COLUMNS,
    "truths", "boxes", "capped", "invalid_boxes", "invalid_truths", "extra_truth_rows", "extra_prediction_rows",
)
COUNT_COLUMNS = COUNT_KEYS + COUNT_SUMS


# --------------------------------------------------------------------------- boxes

def _get(obj: Any, name: str) -> Any:
    """A field of a dict or a Spark Row (None when absent)."""
    try:
        return obj[name]
    except (KeyError, ValueError, IndexError, TypeError):
        return None


def _column(items: Sequence[Any], name: str) -> np.ndarray:
    values = [_get(item, name) for item in items]
    try:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64).reshape(len(values))
    except (TypeError, ValueError):
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                pass
        return out


def _coords(items: Sequence[Any], names: Sequence[str]) -> np.ndarray:
    return np.stack([_column(items, name) for name in names], axis=1) if items else np.zeros((0, len(names)))


def _valid(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    has_label = np.array([isinstance(v, str) and v != "" for v in labels], dtype=bool)
    finite = np.isfinite(values).all(axis=1) if values.size else np.ones(len(labels), dtype=bool)
    box = values[:, -4:]
    ordered = (box[:, 2] >= box[:, 0]) & (box[:, 3] >= box[:, 1]) if values.size else finite
    return has_label & finite & ordered


@dataclass
class Truths:
    labels: np.ndarray  # (G,) str
    boxes: np.ndarray  # (G, 4)
    difficult: np.ndarray  # (G,) bool
    invalid: int = 0


@dataclass
class Boxes:
    labels: np.ndarray  # (D,) str
    scores: np.ndarray  # (D,)
    boxes: np.ndarray  # (D, 4)
    invalid: int = 0


_BOX = ("xmin", "ymin", "xmax", "ymax")


def parse_truths(objects: Iterable[Any] | None) -> Truths:
    """True boxes (``label, xmin, ymin, xmax, ymax, difficult``) as arrays; invalid ones counted and dropped."""
    items = list(objects) if objects is not None else []
    labels = np.array([_get(o, "label") for o in items], dtype=object)
    values = _coords(items, _BOX)
    difficult = np.array([bool(_get(o, "difficult")) for o in items], dtype=bool)
    ok = _valid(labels, values)
    return Truths(labels[ok].astype(str), values[ok].reshape(-1, 4), difficult[ok], int((~ok).sum()))


def parse_boxes(boxes: Iterable[Any] | None) -> Boxes:
    """Predicted boxes (``label, score, xmin, ymin, xmax, ymax``) as arrays; invalid ones counted and dropped."""
    items = list(boxes) if boxes is not None else []
    labels = np.array([_get(b, "label") for b in items], dtype=object)
    values = _coords(items, ("score", *_BOX))
    ok = _valid(labels, values)
    values = values[ok].reshape(-1, 5)
    return Boxes(labels[ok].astype(str), values[:, 0], values[:, 1:], int((~ok).sum()))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), xyxy; 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


# --------------------------------------------------------------------------- matching

def match_class(iou: np.ndarray, difficult: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes (D, N_RULES) of boxes sorted by score against one label's truths, and each truth's box at COCO 0.5.

    ``iou`` is (D boxes, G truths) in the image's truth order. Returns TP/FP/IGNORED per box and
    rule, and per truth the index of the box that matched it under the COCO rule at IoU 0.5 (-1: missed).
    """
    n_boxes, n_truths = iou.shape
    outcome = np.full((n_boxes, N_RULES), FP, dtype=np.int8)
    matched50 = np.full(n_truths, -1, dtype=np.int64)
    if n_boxes == 0 or n_truths == 0:
        return outcome, matched50
    difficult = np.asarray(difficult, dtype=bool)
    # pycocotools sorts truths "ignored last" (stable) and walks them in that order.
    order = np.argsort(difficult, kind="mergesort")
    ious, ignore = iou[:, order], difficult[order]
    # Per box, the truths it could match at the lowest threshold, in the order pycocotools prefers
    # them: regular before difficult, then highest IoU, then (among equal IoUs) the later truth.
    rows, cols = np.nonzero(ious >= COCO_IOU_THRESHOLDS[0])
    values = ious[rows, cols]
    ranked = np.lexsort((-cols, -values, ignore[cols], rows))
    candidates: list[list[tuple[int, float]]] = [[] for _ in range(n_boxes)]
    for d, g, v in zip(rows[ranked].tolist(), cols[ranked].tolist(), values[ranked].tolist(), strict=True):
        candidates[d].append((g, v))
    ignore_list = ignore.tolist()
    for rule, threshold in enumerate(COCO_IOU_THRESHOLDS):
        limit = min(float(threshold), 1 - 1e-10)
        free = [True] * n_truths
        for d in range(n_boxes):
            for g, v in candidates[d]:
                if v >= limit and free[g]:
                    free[g] = False
                    outcome[d, rule] = IGNORED if ignore_list[g] else TP
                    if rule == COCO50:
                        matched50[order[g]] = d
                    break
    best = iou.argmax(axis=1)  # the first of equal IoUs, as the devkit's argmax
    best_iou = iou[np.arange(n_boxes), best].tolist()
    taken = [False] * n_truths
    for d, (j, v) in enumerate(zip(best.tolist(), best_iou, strict=True)):
        if v > VOC_IOU:
            if difficult[j]:
                outcome[d, VOC_RULE] = IGNORED
            elif not taken[j]:
                taken[j] = True
                outcome[d, VOC_RULE] = TP
    return outcome, matched50


@dataclass
class ImageMatch:
    """One image's boxes (the kept ones, per label highest score first) with their outcomes, and its truths."""

    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    #: (boxes, N_RULES): TP, FP or IGNORED under each rule.
    outcome: np.ndarray
    truths: Truths
    #: Per truth, the index (into ``boxes``) of the box that found it at IoU 0.5 (COCO rule), -1 if none.
    truth_match: np.ndarray
    capped: int
    invalid_boxes: int

    def operating_point(self, score_threshold: float) -> tuple[int, int, int]:
        """(TP, FP, missed) at IoU 0.5 counting only boxes scored >= ``score_threshold``.

        Matching goes highest score first, so the matches of those boxes are the same
        whether or not the lower-scored boxes exist.
        """
        kept = self.scores >= score_threshold
        state = self.outcome[kept, COCO50]
        tp, fp = int((state == TP).sum()), int((state == FP).sum())
        regular = ~self.truths.difficult
        found = self.truth_match >= 0
        found[found] = self.scores[self.truth_match[found]] >= score_threshold
        return tp, fp, int((regular & ~found).sum())


def match_image(objects: Iterable[Any] | None, boxes: Iterable[Any] | None, max_detections: int | None = 100) -> ImageMatch:
    """Match one image's predicted boxes to its true boxes under every rule (see the module doc)."""
    truths = parse_truths(objects)
    predicted = parse_boxes(boxes)
    picks: list[np.ndarray] = []
    outcomes: list[np.ndarray] = []
    truth_match = np.full(len(truths.labels), -1, dtype=np.int64)
    capped = offset = 0
    for label in sorted(set(predicted.labels.tolist())):
        mine = np.flatnonzero(predicted.labels == label)
        mine = mine[np.argsort(-predicted.scores[mine], kind="mergesort")]
        if max_detections is not None and len(mine) > max_detections:
            capped += len(mine) - max_detections
            mine = mine[:max_detections]
        theirs = np.flatnonzero(truths.labels == label)
        outcome, matched = match_class(box_iou(predicted.boxes[mine], truths.boxes[theirs]), truths.difficult[theirs])
        found = matched >= 0
        truth_match[theirs[found]] = matched[found] + offset
        picks.append(mine)
        outcomes.append(outcome)
        offset += len(mine)
    keep = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
    return ImageMatch(
        labels=predicted.labels[keep],
        scores=predicted.scores[keep],
        boxes=predicted.boxes[keep].reshape(-1, 4),
        outcome=np.concatenate(outcomes) if outcomes else np.zeros((0, N_RULES), dtype=np.int8),
        truths=truths,
        truth_match=truth_match,
        capped=capped,
        invalid_boxes=predicted.invalid,
    )


# --------------------------------------------------------------------------- counting

@dataclass
class ImageInput:
    """One path with what each side says about it (rows: how many rows each side has for the path; 0: none)."""

    path: str | None
    objects: Iterable[Any] | None = None
    boxes: Iterable[Any] | None = None
    truth_rows: int = 1
    prediction_rows: int = 1
    truth_error: str | None = None
    prediction_error: str | None = None

    @property
    def status(self) -> str:
        if not self.truth_rows:
            return NO_TRUTH
        if self.truth_error is not None:
            return TRUTH_ERROR
        if not self.prediction_rows:
            return NO_PREDICTION
        if self.prediction_error is not None:
            return PREDICTION_ERROR
        return OK

    @property
    def error_kind(self) -> str | None:
        """The text before the first ``:`` of the error that set the status."""
        error = {TRUTH_ERROR: self.truth_error, PREDICTION_ERROR: self.prediction_error}.get(self.status)
        return (error.split(":", 1)[0].strip() or "error") if error is not None else None


def score_keys(scores: np.ndarray, resolution: float) -> np.ndarray:
    """Scores rounded to ``resolution``, as integers (the grouping key of the counts)."""
    return np.clip(np.rint(np.asarray(scores, dtype=np.float64) / resolution), -(2**62), 2**62).astype(np.int64)


def score_of(key: int, resolution: float) -> float:
    """The score a key stands for (rounded so that 500000 * 1e-6 reads 0.5)."""
    return round(float(key) * resolution, 12)


def _empty_counts() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object if c in ("kind", "label", "status", "error_kind") else np.int64)
                          for c in COUNT_COLUMNS})
    return frame


def count_images(images: Iterable[ImageInput], settings: DetectionEvaluationSettings | None = None) -> pd.DataFrame:
    """The counts (COUNT_COLUMNS) of some images; counts of disjoint image sets add up."""
    settings = settings or DetectionEvaluationSettings()
    box_labels: list[np.ndarray] = []
    box_keys: list[np.ndarray] = []
    box_outcomes: list[np.ndarray] = []
    truth_rows: dict[str, list[int]] = {}
    image_rows: dict[tuple[str, str | None], list[int]] = {}
    for image in images:
        status = image.status
        judged = status in JUDGED
        if judged:
            # A prediction row with an error has no boxes; its truths are all missed.
            match = match_image(image.objects, image.boxes, settings.max_detections)
            n_truths, n_boxes = len(match.truths.labels), len(match.labels)
            n_positives = int((~match.truths.difficult).sum())
            capped, invalid_boxes, invalid_truths = match.capped, match.invalid_boxes, match.truths.invalid
            box_labels.append(match.labels)
            box_keys.append(score_keys(match.scores, settings.score_resolution))
            box_outcomes.append(match.outcome)
            for label, difficult in zip(match.truths.labels.tolist(), match.truths.difficult.tolist(), strict=True):
                entry = truth_rows.setdefault(label, [0, 0])
                entry[1 if difficult else 0] += 1
        else:
            # Not judged: only how many boxes there were.
            n_truths = n_positives = capped = invalid_truths = 0
            n_boxes = len(list(image.boxes)) if image.boxes is not None else 0
            invalid_boxes = 0
        entry = image_rows.setdefault((status, image.error_kind), [0] * 9)
        for i, value in enumerate((1, n_truths, n_positives, n_boxes, capped, invalid_boxes, invalid_truths,
                                   max(0, image.truth_rows - 1), max(0, image.prediction_rows - 1))):
            entry[i] += value
    parts = []
    if box_labels and sum(len(x) for x in box_labels):
        outcome = np.concatenate(box_outcomes)
        frame = pd.DataFrame({"label": np.concatenate(box_labels), "score_key": np.concatenate(box_keys)})
        frame["n"] = 1
        for j in range(N_RULES):
            frame[TP_COLUMNS[j]] = (outcome[:, j] == TP).astype(np.int64)
            frame[FP_COLUMNS[j]] = (outcome[:, j] == FP).astype(np.int64)
        frame = frame.groupby(["label", "score_key"], as_index=False, sort=False).sum()
        frame["kind"] = BOX
        parts.append(frame)
    if truth_rows:
        parts.append(pd.DataFrame({
            "kind": TRUTH, "label": list(truth_rows),
            "positives": [v[0] for v in truth_rows.values()], "difficult": [v[1] for v in truth_rows.values()],
        }))
    if image_rows:
        names = ("n", "truths", "positives", "boxes", "capped", "invalid_boxes", "invalid_truths", "extra_truth_rows",
                 "extra_prediction_rows")
        parts.append(pd.DataFrame(
            [{"kind": IMAGE, "status": s, "error_kind": k, **dict(zip(names, v, strict=True))}
             for (s, k), v in image_rows.items()]
        ))
    if not parts:
        return _empty_counts()
    out = pd.concat(parts, ignore_index=True)
    for column in COUNT_SUMS:
        out[column] = out[column].fillna(0).astype(np.int64) if column in out else np.int64(0)
    if "score_key" not in out:
        out["score_key"] = None
    out["score_key"] = out["score_key"].astype("Int64")
    for column in ("label", "status", "error_kind"):
        if column not in out:
            out[column] = None
        out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out[list(COUNT_COLUMNS)]


def sum_counts(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Add counts frames up by their keys (what Spark's groupBy does, for local use)."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return _empty_counts()
    frame = pd.concat(frames, ignore_index=True)
    keys = list(COUNT_KEYS)
    filled = frame.assign(**{k: frame[k].astype(object).where(frame[k].notna(), "\0") for k in keys})
    summed = filled.groupby(keys, as_index=False, sort=False)[list(COUNT_SUMS)].sum()
    for k in keys:
        summed[k] = summed[k].where(summed[k] != "\0", None)
    summed["score_key"] = summed["score_key"].astype("Int64")
    return summed[list(COUNT_COLUMNS)]


# --------------------------------------------------------------------------- metrics

@dataclass
class OperatingPoint:
    """Precision and recall at IoU 0.5 of the boxes scored >= ``score``."""

    score: float | None
    tp: int
    fp: int
    #: Positives not found (difficult truths never count).
    fn: int
    #: 0 when no box is counted (scikit-learn's ``zero_division=0``).
    precision: float
    #: None when there are no positives.
    recall: float | None
    f1: float | None


@dataclass
class DetectionClassMetrics:
    label: str
    #: True boxes that are not difficult, in judged images.
    positives: int
    difficult: int
    #: Boxes judged (valid, within ``max_detections``).
    predictions: int
    #: COCO AP averaged over IoU 0.50:0.95, at 0.50 and at 0.75; VOC all-point AP at 0.5. None without positives.
    ap: float | None
    ap50: float | None
    ap75: float | None
    voc_ap50: float | None
    at_threshold: OperatingPoint
    best_f1: OperatingPoint | None


@dataclass
class DetectionResult:
    """Everything ``evaluate --task detect`` measures; ``to_dict`` is what metrics.json holds."""

    #: Distinct paths among the truth and the predictions.
    images: int
    #: Images judged: statuses ok, prediction_error and no_prediction.
    evaluated_images: int
    image_status: dict[str, int]
    prediction_error_kinds: dict[str, int]
    truth_error_kinds: dict[str, int]
    #: Valid true boxes in judged images (difficult ones included) and how many are difficult.
    truths: int
    difficult_truths: int
    #: Positives in images judged without boxes (prediction_error, no_prediction): all missed.
    missed_in_failed_images: int
    #: Boxes judged; boxes beyond max_detections; invalid boxes; boxes of images not judged.
    predictions: int
    capped_predictions: int
    invalid_predictions: int
    invalid_truths: int
    unjudged_predictions: int
    duplicate_truth_rows: int
    duplicate_prediction_rows: int
    classes: list[str]
    #: Means over the classes with positives (None when no class has one).
    map: float | None
    map50: float | None
    map75: float | None
    voc_map50: float | None
    #: Pooled over classes (micro), COCO rule at IoU 0.5.
    at_threshold: OperatingPoint | None
    best_f1: OperatingPoint | None
    per_class: list[DetectionClassMetrics]
    #: Per class with positives: recall, precision and score of the curve at IoU 0.5 (COCO rule), downsampled.
    pr_curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    task: str = "detect"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectionResult:
        data = dict(data)

        def point(value: dict | None) -> OperatingPoint | None:
            return OperatingPoint(**value) if value else None

        data["at_threshold"] = point(data.get("at_threshold"))
        data["best_f1"] = point(data.get("best_f1"))
        data["per_class"] = [
            DetectionClassMetrics(**{**c, "at_threshold": point(c["at_threshold"]), "best_f1": point(c.get("best_f1"))})
            for c in data.get("per_class", [])
        ]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary(self) -> dict[str, Any]:
        """The headline numbers."""
        return {
            "images": self.images,
            "evaluated_images": self.evaluated_images,
            "map": self.map,
            "map50": self.map50,
            "map75": self.map75,
            "voc_map50": self.voc_map50,
            "precision": self.at_threshold.precision if self.at_threshold else None,
            "recall": self.at_threshold.recall if self.at_threshold else None,
            "best_f1": self.best_f1.f1 if self.best_f1 else None,
        }


def coco_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """pycocotools' 101-point interpolated AP of one curve (points in descending score order)."""
    n = len(recall)
    if n == 0:
        return 0.0
    envelope = np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    return float(np.where(index < n, envelope[np.minimum(index, n - 1)], 0.0).mean())


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP (VOC2010+, the devkit's ``voc_ap(use_07_metric=False)``)."""
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _ratio(num: np.ndarray, den: np.ndarray | float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.broadcast_to(np.asarray(den, dtype=np.float64), num.shape)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _point(score: float | None, tp: int, fp: int, positives: int) -> OperatingPoint:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives if positives else None
    f1 = 2 * tp / (tp + fp + positives) if positives else None
    return OperatingPoint(score, int(tp), int(fp), int(positives - tp), float(precision),
                          None if recall is None else float(recall), None if f1 is None else float(f1))


def _operating_points(keys: np.ndarray, tp: np.ndarray, fp: np.ndarray, positives: int,
                      settings: DetectionEvaluationSettings) -> tuple[OperatingPoint, OperatingPoint | None]:
    """At the score threshold, and at the best F1, of one curve (cumulative ``tp``/``fp`` by descending ``keys``)."""
    threshold_key = score_keys(np.array([settings.score_threshold]), settings.score_resolution)[0]
    above = int(np.searchsorted(-keys, -threshold_key, side="right"))
    at = _point(settings.score_threshold, tp[above - 1] if above else 0, fp[above - 1] if above else 0, positives)
    best = None
    if positives and len(keys):
        f1 = 2 * tp / (tp + fp + positives)
        i = int(np.argmax(f1))
        best = _point(score_of(keys[i], settings.score_resolution), tp[i], fp[i], positives)
    return at, best


def _downsample(n: int, points: int) -> np.ndarray:
    if n <= points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, points)).astype(np.int64))


def _kind_rows(counts: pd.DataFrame, kind: str) -> pd.DataFrame:
    return counts[counts["kind"] == kind]


def metrics_from_counts(counts: pd.DataFrame, settings: DetectionEvaluationSettings | None = None) -> DetectionResult:
    """Every metric from summed counts (one row per key; see :func:`count_images`)."""
    settings = settings or DetectionEvaluationSettings()
    counts = counts.copy()
    for column in COUNT_SUMS:
        counts[column] = pd.to_numeric(counts[column]).fillna(0).astype(np.int64)
    boxes = _kind_rows(counts, BOX).copy()
    boxes["score_key"] = boxes["score_key"].astype(np.int64)
    boxes = boxes.sort_values(["label", "score_key"], ascending=[True, False], kind="mergesort")
    truth = _kind_rows(counts, TRUTH).groupby("label")[["positives", "difficult"]].sum()
    images = _kind_rows(counts, IMAGE)

    classes = sorted(set(boxes["label"]) | set(truth.index))
    per_class: list[DetectionClassMetrics] = []
    curves: dict[str, dict[str, list[float]]] = {}
    for label in classes:
        positives = int(truth["positives"].get(label, 0))
        difficult = int(truth["difficult"].get(label, 0))
        mine = boxes[boxes["label"] == label]
        keys = mine["score_key"].to_numpy(np.int64)
        tp = np.cumsum(mine[list(TP_COLUMNS)].to_numpy(np.int64), axis=0)
        fp = np.cumsum(mine[list(FP_COLUMNS)].to_numpy(np.int64), axis=0)
        ap = ap50 = ap75 = voc = None
        if positives:
            recall = tp / positives
            precision = _ratio(tp, tp + fp)
            coco = [coco_ap(recall[:, j], precision[:, j]) for j in range(len(COCO_IOU_THRESHOLDS))]
            ap, ap50, ap75 = float(np.mean(coco)), coco[COCO50], coco[COCO75]
            voc = voc_ap(recall[:, VOC_RULE], precision[:, VOC_RULE])
            keep = _downsample(len(keys), settings.curve_points)
            curves[label] = {
                "recall": [round(float(v), 6) for v in recall[keep, COCO50]],
                "precision": [round(float(v), 6) for v in precision[keep, COCO50]],
                "score": [score_of(k, settings.score_resolution) for k in keys[keep]],
            }
        at, best = _operating_points(keys, tp[:, COCO50], fp[:, COCO50], positives, settings)
        per_class.append(DetectionClassMetrics(label, positives, difficult, int(mine["n"].sum()), ap, ap50, ap75,
                                               voc, at, best))

    scored = [c for c in per_class if c.positives]

    def mean(values: list[float | None]) -> float | None:
        return float(np.mean(values)) if scored else None

    total_positives = sum(c.positives for c in per_class)
    pooled = boxes.groupby("score_key")[[TP_COLUMNS[COCO50], FP_COLUMNS[COCO50]]].sum().sort_index(ascending=False)
    at_threshold, best_f1 = (None, None)
    if classes:
        at_threshold, best_f1 = _operating_points(
            pooled.index.to_numpy(np.int64), np.cumsum(pooled[TP_COLUMNS[COCO50]].to_numpy(np.int64)),
            np.cumsum(pooled[FP_COLUMNS[COCO50]].to_numpy(np.int64)), total_positives, settings,
        )

    status = {s: 0 for s in STATUSES}
    kinds: dict[str, dict[str, int]] = {PREDICTION_ERROR: {}, TRUTH_ERROR: {}}
    for row in images.itertuples(index=False):
        status[row.status] = status.get(row.status, 0) + int(row.n)
        if row.status in kinds:
            kind = row.error_kind or "error"
            kinds[row.status][kind] = kinds[row.status].get(kind, 0) + int(row.n)
    judged = images[images["status"].isin(JUDGED)]
    unjudged = images[~images["status"].isin(JUDGED)]
    failed = images[images["status"].isin((PREDICTION_ERROR, NO_PREDICTION))]
    missed_failed = int(failed["positives"].sum())
    return DetectionResult(
        images=int(images["n"].sum()),
        evaluated_images=int(judged["n"].sum()),
        image_status=status,
        prediction_error_kinds=dict(sorted(kinds[PREDICTION_ERROR].items())),
        truth_error_kinds=dict(sorted(kinds[TRUTH_ERROR].items())),
        truths=int(judged["truths"].sum()),
        difficult_truths=int(truth["difficult"].sum()) if len(truth) else 0,
        missed_in_failed_images=missed_failed,
        predictions=int(boxes["n"].sum()),
        capped_predictions=int(judged["capped"].sum()),
        invalid_predictions=int(judged["invalid_boxes"].sum()),
        invalid_truths=int(judged["invalid_truths"].sum()),
        unjudged_predictions=int(unjudged["boxes"].sum()),
        duplicate_truth_rows=int(images["extra_truth_rows"].sum()),
        duplicate_prediction_rows=int(images["extra_prediction_rows"].sum()),
        classes=classes,
        map=mean([c.ap for c in scored]),
        map50=mean([c.ap50 for c in scored]),
        map75=mean([c.ap75 for c in scored]),
        voc_map50=mean([c.voc_ap50 for c in scored]),
        at_threshold=at_threshold,
        best_f1=best_f1,
        per_class=per_class,
        pr_curves=curves,
        settings={
            "iou_thresholds": [round(float(t), 2) for t in COCO_IOU_THRESHOLDS],
            "score_threshold": settings.score_threshold,
            "max_detections": settings.max_detections,
            "score_resolution": settings.score_resolution,
        },
    )


def evaluate_images(images: Iterable[ImageInput], settings: DetectionEvaluationSettings | None = None) -> DetectionResult:
    """All metrics of some images, in this process (the Spark job does the same in tasks)."""
    settings = settings or DetectionEvaluationSettings()
    return metrics_from_counts(count_images(images, settings), settings)


def evaluate_local(
    truth: Mapping[str, Iterable[Any] | None],
    predictions: Mapping[str, Iterable[Any] | None],
    prediction_errors: Mapping[str, str] | None = None,
    settings: DetectionEvaluationSettings | None = None,
) -> DetectionResult:
    """Metrics of ``{path: true objects}`` against ``{path: predicted boxes}`` (``prediction_errors``: {path: error})."""
    errors = dict(prediction_errors or {})
    paths = list(dict.fromkeys([*truth, *predictions, *errors]))
    images = [
        ImageInput(
            path,
            objects=truth.get(path),
            boxes=predictions.get(path),
            truth_rows=int(path in truth),
            prediction_rows=int(path in predictions or path in errors),
            prediction_error=errors.get(path),
        )
        for path in paths
    ]
    return evaluate_images(images, settings)


def image_f1(tp: int, fp: int, fn: int) -> float:
    """F1 of one image; 1 when there was nothing to find and nothing was predicted."""
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
