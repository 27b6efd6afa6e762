"""Box-aware batch augmentation for detection training.

Images are float ``(N, C, H, W)`` in [0, 1], already letterboxed to the model size;
boxes are per image ``(M, 4)`` in the same input pixels. Geometry (scale jitter with a
random placement: zoom in = random crop, zoom out = the image smaller on a padded
canvas) is one affine warp per image via :func:`sparkvision.training.augment.warp`, and
the same affine maps the boxes. Boxes are then clipped to the frame; a box keeping less
than ``min_visible`` of its area, or thinner than 2 px, is dropped with its label.
Photometric jitter reuses the classification augmentations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sparkvision.training.augment import affine_theta, color_jitter, hflip, warp


@dataclass(frozen=True)
class DetectionAugment:
    hflip_prob: float = 0.5
    vflip_prob: float = 0.0
    #: Probability of a scale jitter per image, and the zoom range (>1 enlarges objects).
    scale_prob: float = 0.8
    zoom: tuple[float, float] = (0.6, 1.6)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    min_visible: float = 0.4

    @property
    def any(self) -> bool:
        return (self.hflip_prob > 0 or self.vflip_prob > 0 or self.scale_prob > 0 or self.brightness > 0
                or self.contrast > 0 or self.saturation > 0)


def _affine_boxes(boxes: np.ndarray, s: float, cx: float, cy: float, width: int, height: int) -> np.ndarray:
    """Boxes through the warp that samples input = s * output + c (normalised coordinates)."""
    out = boxes.astype(np.float64, copy=True)
    xn = out[:, 0::2] / width * 2 - 1
    yn = out[:, 1::2] / height * 2 - 1
    out[:, 0::2] = ((xn - cx) / s + 1) * width / 2
    out[:, 1::2] = ((yn - cy) / s + 1) * height / 2
    return out


def clip_and_filter(boxes: np.ndarray, labels: np.ndarray, width: int, height: int,
                    min_visible: float) -> tuple[np.ndarray, np.ndarray]:
    if not len(boxes):
        return boxes, labels
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    keep = (w >= 2) & (h >= 2) & (w * h >= min_visible * np.maximum(area, 1e-9))
    return clipped[keep], labels[keep]


class DetectionAugmenter:
    def __init__(self, config: DetectionAugment) -> None:
        self.config = config

    def __call__(self, x: torch.Tensor, boxes: list[np.ndarray], labels: list[np.ndarray],
                 rng: np.random.Generator) -> tuple[torch.Tensor, list[np.ndarray], list[np.ndarray]]:
        cfg = self.config
        n, _, h, w = x.shape
        boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes]
        labels = [np.asarray(lab, dtype=np.int64) for lab in labels]
        if cfg.scale_prob > 0:
            jitter = rng.uniform(size=n) < cfg.scale_prob
            zoom = np.exp(rng.uniform(np.log(cfg.zoom[0]), np.log(cfg.zoom[1]), size=n))
            s = np.where(jitter, 1.0 / zoom, 1.0)
            # Any placement that keeps the sampled window overlapping the frame.
            span = np.abs(1.0 - s)
            cx = np.where(jitter, rng.uniform(-1, 1, size=n) * span, 0.0)
            cy = np.where(jitter, rng.uniform(-1, 1, size=n) * span, 0.0)
            if jitter.any():
                x = warp(x, affine_theta(s, s, cx, cy, np.zeros(n), h, w))
                for i in np.flatnonzero(jitter):
                    boxes[i] = _affine_boxes(boxes[i], s[i], cx[i], cy[i], w, h)
        if cfg.hflip_prob > 0:
            flip = rng.uniform(size=n) < cfg.hflip_prob
            x = hflip(x, flip)
            for i in np.flatnonzero(flip):
                boxes[i] = boxes[i][:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [w, 0, w, 0]
        if cfg.vflip_prob > 0:
            flip = rng.uniform(size=n) < cfg.vflip_prob
            mask = torch.as_tensor(flip, device=x.device).view(-1, 1, 1, 1)
            x = torch.where(mask, x.flip(-2), x)
            for i in np.flatnonzero(flip):
                boxes[i] = boxes[i][:, [0, 3, 2, 1]] * [1, -1, 1, -1] + [0, h, 0, h]
        for i in range(n):
            boxes[i], labels[i] = clip_and_filter(boxes[i], labels[i], w, h, cfg.min_visible)
        if cfg.brightness > 0 or cfg.contrast > 0 or cfg.saturation > 0:
            x = color_jitter(
                x,
                rng.uniform(1 - cfg.brightness, 1 + cfg.brightness, size=n),
                rng.uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, size=n),
                rng.uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, size=n),
            )
        return x, boxes, labels
