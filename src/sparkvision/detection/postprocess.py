"""The one decoder from a detector graph's outputs to boxes on the original image.

Spark's ``detect``, the HTTP server and tiling all call :func:`decode`, so a detection
is the same wherever it is made. Steps per image: keep (location, class) pairs scoring
at least ``score_threshold``, the ``pre_nms_top_k`` best of them, per-class NMS at
``iou_threshold``, the ``max_boxes`` best survivors, then undo the letterbox (scale and
padding) and clip to the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparkvision.config import PreprocessConfig
from sparkvision.preprocess.transforms import letterbox_placement


@dataclass(frozen=True)
class DecodeSettings:
    """Post-processing knobs; defaults are the usual COCO-evaluation ones."""

    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    max_boxes: int = 100
    pre_nms_top_k: int = 1000

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold!r}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold!r}")
        if self.max_boxes < 1 or self.pre_nms_top_k < 1:
            raise ValueError("max_boxes and pre_nms_top_k must be at least 1")


@dataclass(frozen=True)
class Letterbox:
    """How an original image was placed in the model input: ``input = original * scale + pad``."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    width: int  # original (displayed) size
    height: int

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
        out[:, 0::2] = (out[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (out[:, 1::2] - self.pad_y) / self.scale_y
        from sparkvision.detection.boxes import clip_boxes  # torch: imported where a detector decodes

        return clip_boxes(out, self.width, self.height)

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
        out[:, 0::2] = out[:, 0::2] * self.scale_x + self.pad_x
        out[:, 1::2] = out[:, 1::2] * self.scale_y + self.pad_y
        return out


def letterbox_of(width: int, height: int, config: PreprocessConfig) -> Letterbox:
    """How an image of ``width`` x ``height`` sits in the model input under ``config``."""
    if config.resize_mode == "letterbox":
        new_w, new_h, pad_x, pad_y = letterbox_placement(width, height, config)
        return Letterbox(new_w / width, new_h / height, pad_x, pad_y, width, height)
    if config.resize_mode == "resize":
        target_h, target_w = config.size
        return Letterbox(target_w / width, target_h / height, 0, 0, width, height)
    raise ValueError(f"a detector needs resize_mode 'letterbox' or 'resize', not {config.resize_mode!r}")


@dataclass
class Detections:
    """One image's detections: ``boxes`` (K, 4) x1, y1, x2, y2; ``scores`` (K,); ``classes`` (K,) indices."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def records(self, labels: list[str] | tuple[str, ...]) -> list[dict]:
        """Rows of the ``boxes`` column: label, score, xmin, ymin, xmax, ymax."""
        return [
            {"label": labels[int(c)], "score": float(s), "xmin": float(b[0]), "ymin": float(b[1]),
             "xmax": float(b[2]), "ymax": float(b[3])}
            for b, s, c in zip(self.boxes, self.scores, self.classes, strict=True)
        ]


def empty() -> Detections:
    return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))


def decode(boxes: np.ndarray, scores: np.ndarray, settings: DecodeSettings | None = None,
           letterbox: Letterbox | None = None) -> Detections:
    """One image: ``boxes`` (A, 4) in input pixels, ``scores`` (A, C) -> final detections."""
    from sparkvision.detection.boxes import batched_nms  # torch: imported where a detector decodes

    settings = settings or DecodeSettings()
    scores = np.asarray(scores)
    flat = scores.reshape(-1)
    candidates = np.flatnonzero(flat >= settings.score_threshold)
    if not len(candidates):
        return empty()
    if len(candidates) > settings.pre_nms_top_k:
        top = np.argpartition(-flat[candidates], settings.pre_nms_top_k - 1)[: settings.pre_nms_top_k]
        candidates = candidates[top]
    loc, cls = np.divmod(candidates, scores.shape[1])
    cand_boxes = np.asarray(boxes, dtype=np.float64)[loc]
    if letterbox is not None:
        cand_boxes = letterbox.to_original(cand_boxes)
    cand_scores = flat[candidates].astype(np.float64)
    valid = (cand_boxes[:, 2] > cand_boxes[:, 0]) & (cand_boxes[:, 3] > cand_boxes[:, 1])
    cand_boxes, cand_scores, cls = cand_boxes[valid], cand_scores[valid], cls[valid]
    keep = batched_nms(cand_boxes, cand_scores, cls, settings.iou_threshold)[: settings.max_boxes]
    return Detections(cand_boxes[keep], cand_scores[keep], cls[keep].astype(np.int64))
