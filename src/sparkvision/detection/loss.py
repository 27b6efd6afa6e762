"""FCOS training targets and loss.

Targets (per image): a location is a positive of a box when it lies inside the box's
centre region (``center_radius`` strides around the box centre, clipped to the box:
FCOS's "center sampling") and the box's largest side distance from it falls in the
location's level range; among several such boxes the smallest wins. Loss: sigmoid focal
loss over every location and class, GIoU on positives weighted by the centerness
target, and binary cross-entropy on centerness, each normalised by the positives
(summed over ranks in distributed training by the caller when wanted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from sparkvision.detection.boxes import generalized_iou_loss
from sparkvision.models.fcos import flatten_levels, level_points


@dataclass
class Targets:
    labels: torch.Tensor  # (N, A) int64, num_classes = background
    ltrb: torch.Tensor  # (N, A, 4) distances in pixels (valid where positive)
    centerness: torch.Tensor  # (N, A)


def assign_targets(
    points: torch.Tensor, strides: torch.Tensor, ranges: torch.Tensor, boxes: list[torch.Tensor],
    labels: list[torch.Tensor], num_classes: int, center_radius: float = 1.5,
) -> Targets:
    """FCOS assignment for a batch; ``boxes[i]`` (M, 4) and ``labels[i]`` (M,) per image."""
    n, a = len(boxes), points.shape[0]
    out_labels = torch.full((n, a), num_classes, dtype=torch.int64, device=points.device)
    out_ltrb = torch.zeros((n, a, 4), dtype=points.dtype, device=points.device)
    out_ctr = torch.zeros((n, a), dtype=points.dtype, device=points.device)
    px, py = points[:, 0:1], points[:, 1:2]
    for i, (gt, cls) in enumerate(zip(boxes, labels, strict=True)):
        if gt.numel() == 0:
            continue
        gt = gt.to(points.dtype)
        left, top = px - gt[None, :, 0], py - gt[None, :, 1]
        right, bottom = gt[None, :, 2] - px, gt[None, :, 3] - py
        ltrb = torch.stack([left, top, right, bottom], dim=-1)  # (A, M, 4)
        cx, cy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
        radius = strides[:, None] * center_radius
        cx0 = torch.maximum(cx[None] - radius, gt[None, :, 0])
        cy0 = torch.maximum(cy[None] - radius, gt[None, :, 1])
        cx1 = torch.minimum(cx[None] + radius, gt[None, :, 2])
        cy1 = torch.minimum(cy[None] + radius, gt[None, :, 3])
        in_center = (px > cx0) & (px < cx1) & (py > cy0) & (py < cy1)
        in_box = ltrb.min(dim=-1).values > 0
        reach = ltrb.max(dim=-1).values
        in_range = (reach >= ranges[:, 0:1]) & (reach <= ranges[:, 1:2])
        area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None].expand(a, -1).clone()
        area[~(in_center & in_box & in_range)] = float("inf")
        best_area, best = area.min(dim=1)
        positive = torch.isfinite(best_area)
        chosen = ltrb[torch.arange(a, device=points.device), best]
        out_labels[i] = torch.where(positive, cls.to(torch.int64)[best], torch.full_like(best, num_classes))
        out_ltrb[i] = chosen
        lr = chosen[:, [0, 2]]
        tb = chosen[:, [1, 3]]
        ctr = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)) * (
            tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6))
        out_ctr[i] = torch.where(positive, ctr.clamp(min=0).sqrt(), torch.zeros_like(ctr))
    return Targets(out_labels, out_ltrb, out_ctr)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * loss).sum()


class FCOSLoss:
    """Callable ``(outputs, boxes, labels) -> (total, parts)`` for a batch.

    ``num_positives`` may be given (e.g. the mean over ranks) to normalise like
    single-process training does.
    """

    def __init__(self, num_classes: int, strides: tuple[int, ...], ranges, center_radius: float = 1.5) -> None:
        self.num_classes = num_classes
        self.strides = strides
        self.ranges = ranges
        self.center_radius = center_radius
        self._cache: dict = {}

    def _grid(self, shapes, device, dtype):
        key = (tuple(shapes), str(device), dtype)
        if key not in self._cache:
            pts = level_points(shapes, self.strides, device, dtype)
            strides = torch.cat([torch.full((len(p),), float(s), device=device, dtype=dtype)
                                 for p, s in zip(pts, self.strides, strict=True)])
            ranges = torch.cat([torch.tensor([r], device=device, dtype=dtype).expand(len(p), 2)
                                for p, r in zip(pts, self.ranges, strict=True)])
            self._cache[key] = (torch.cat(pts), strides, ranges)
        return self._cache[key]

    def __call__(self, outputs, boxes: list[torch.Tensor], labels: list[torch.Tensor]):
        cls, ltrb, ctr = outputs
        shapes = [tuple(c.shape[-2:]) for c in cls]
        points, strides, ranges = self._grid(shapes, cls[0].device, cls[0].dtype)
        with torch.no_grad():
            targets = assign_targets(points, strides, ranges, boxes, labels, self.num_classes, self.center_radius)
        cls_flat = flatten_levels(cls)  # (N, A, C)
        ltrb_flat = flatten_levels(ltrb)
        ctr_flat = flatten_levels(ctr).squeeze(-1)
        positive = targets.labels < self.num_classes
        num_pos = max(float(positive.sum()), 1.0)
        onehot = F.one_hot(targets.labels, self.num_classes + 1)[..., : self.num_classes].to(cls_flat.dtype)
        loss_cls = sigmoid_focal_loss(cls_flat, onehot) / num_pos
        if positive.any():
            p = points.unsqueeze(0).expand(len(boxes), -1, -1)[positive]
            pred = ltrb_flat[positive]
            tgt = targets.ltrb[positive]
            pred_boxes = torch.cat([p - pred[:, :2], p + pred[:, 2:]], dim=1)
            tgt_boxes = torch.cat([p - tgt[:, :2], p + tgt[:, 2:]], dim=1)
            weight = targets.centerness[positive]
            loss_box = (generalized_iou_loss(pred_boxes, tgt_boxes) * weight).sum() / weight.sum().clamp(min=1e-6)
            loss_ctr = F.binary_cross_entropy_with_logits(ctr_flat[positive], weight, reduction="sum") / num_pos
        else:
            loss_box = ltrb_flat.sum() * 0.0
            loss_ctr = ctr_flat.sum() * 0.0
        total = loss_cls + loss_box + loss_ctr
        return total, {"cls": float(loss_cls.detach()), "box": float(loss_box.detach()),
                       "ctr": float(loss_ctr.detach()),
                       "positives": float(positive.sum())}
