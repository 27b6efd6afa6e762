"""Box arithmetic in NumPy and torch: IoU, GIoU, clipping and per-class NMS.

torchvision's ops do not import beside this torch, so sparkvision carries its own.
Boxes are ``(x1, y1, x2, y2)`` in pixels, ``x2 > x1`` for a box with area; the
continuous convention (area = (x2-x1)*(y2-y1)) that COCO's evaluation also uses.
"""

from __future__ import annotations

import numpy as np
import torch


def box_area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, (len(a), len(b)); 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first.

    Ties in score keep input order (a stable sort), so results do not depend on the
    platform's sort.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    areas = box_area(boxes)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[:, 0] * wh[:, 1]
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Per-class NMS: boxes of different classes never suppress each other.

    Returns kept indices sorted by descending score (stable).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64)
    classes = np.asarray(classes)
    if not len(boxes):
        return np.empty(0, dtype=np.int64)
    # Offsetting each class by more than the span of all boxes keeps classes apart in one pass.
    span = float(boxes.max() - boxes.min()) + 1.0
    offsets = classes.astype(np.float64)[:, None] * span
    keep = nms(boxes + offsets, scores, iou_threshold)
    return keep[np.argsort(-scores[keep], kind="stable")]


# ---------------------------------------------------------------- torch, for losses


def generalized_iou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - GIoU per row of matching (x1, y1, x2, y2) boxes."""
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_p = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    area_t = (target[:, 2] - target[:, 0]).clamp(min=0) * (target[:, 3] - target[:, 1]).clamp(min=0)
    union = area_p + area_t - inter
    iou = inter / (union + eps)
    enclose_lt = torch.minimum(pred[:, :2], target[:, :2])
    enclose_rb = torch.maximum(pred[:, 2:], target[:, 2:])
    enclose_wh = (enclose_rb - enclose_lt).clamp(min=0)
    enclose = enclose_wh[:, 0] * enclose_wh[:, 1]
    giou = iou - (enclose - union) / (enclose + eps)
    return 1.0 - giou
