"""Tile probabilities back onto the image: heat rasters, per-image labels, boxes, overlays.

Rules (also in the README's Tiling section):

* **Heat raster.** The image is divided into square cells of ``cell`` full-resolution
  pixels (edge cells are clipped to the image). A cell's value for a class is the
  *average* probability of every scored tile whose region contains the cell's centre, so
  where tiles overlap their votes are averaged. Cells no scored tile covers (background
  tiles, errors) are NaN: no evidence either way.
* **Image label.** Per class, the ``max`` or ``mean`` of the tile probabilities, or for
  ``vote`` the fraction of tiles predicting it; the label is the best class. With a
  ``background_class``, the best *other* class wins only if its score reaches
  ``threshold`` (max/mean), else the image is background.
* **Boxes.** Per class (not the background class), the cells at or above ``threshold``
  form regions by 4-connectivity (``scipy.ndimage.label``); each region with at least
  ``min_cells`` cells becomes a box in full-resolution pixels, scored by its peak value.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from sparkvision.config import HeatmapSettings


@dataclass(frozen=True)
class Box:
    """A localized region in full-resolution pixel coordinates."""

    class_name: str
    x: int
    y: int
    w: int
    h: int
    score: float  # peak heat in the region
    mean_score: float
    cells: int

    def to_dict(self) -> dict:
        return asdict(self)


def default_cell(tile_size: int, level: int = 0) -> int:
    """A quarter of a tile's full-resolution footprint: overlaps show, rasters stay small."""
    return max(1, (tile_size * 2**level) // 4)


def cell_edges(length: int, cell: int) -> np.ndarray:
    """Cell boundaries along one side: 0, cell, 2*cell, ..., length."""
    edges = np.arange(0, length, cell, dtype=np.int64)
    return np.append(edges, length)


def heat_raster(
    boxes: np.ndarray, probabilities: np.ndarray, width: int, height: int, cell: int
) -> tuple[np.ndarray, np.ndarray]:
    """Average tile probabilities per cell.

    ``boxes`` is (n, 4) of ``x, y, w, h``; ``probabilities`` is (n, classes). Returns the
    heat (classes, rows, cols) with NaN where no tile covers a cell's centre, and the
    number of tiles per cell (rows, cols).
    """
    xs, ys = cell_edges(width, cell), cell_edges(height, cell)
    cx, cy = (xs[:-1] + xs[1:]) / 2.0, (ys[:-1] + ys[1:]) / 2.0
    classes = probabilities.shape[1] if probabilities.ndim == 2 else 0
    total = np.zeros((classes, len(cy), len(cx)), dtype=np.float64)
    count = np.zeros((len(cy), len(cx)), dtype=np.int64)
    for (x, y, w, h), probs in zip(np.asarray(boxes, dtype=np.int64), probabilities, strict=True):
        c0, c1 = np.searchsorted(cx, x, "left"), np.searchsorted(cx, x + w, "left")
        r0, r1 = np.searchsorted(cy, y, "left"), np.searchsorted(cy, y + h, "left")
        if c1 <= c0 or r1 <= r0:
            continue
        total[:, r0:r1, c0:c1] += probs[:, None, None]
        count[r0:r1, c0:c1] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        heat = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return heat, count


def image_scores(probabilities: np.ndarray, method: str) -> np.ndarray:
    """Per-class image score from tile probabilities (n, classes)."""
    if len(probabilities) == 0:
        return np.full(probabilities.shape[1] if probabilities.ndim == 2 else 0, np.nan)
    if method == "max":
        return probabilities.max(axis=0)
    if method == "mean":
        return probabilities.mean(axis=0)
    if method == "vote":
        votes = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1])
        return votes / votes.sum()
    raise ValueError(f"method must be max, mean or vote, got {method!r}")


def image_label(scores: np.ndarray, labels: Sequence[str], settings: HeatmapSettings) -> str | None:
    """The image's label from its class scores, by the rules in the module docstring."""
    if len(scores) == 0 or not np.all(np.isfinite(scores)):
        return None
    background = settings.background_class
    if background is None or background not in labels or settings.method == "vote":
        return labels[int(np.argmax(scores))]
    others = [i for i, name in enumerate(labels) if name != background]
    best = max(others, key=lambda i: scores[i])
    return labels[best] if scores[best] >= settings.threshold else background


def find_boxes(heat: np.ndarray, label: str, cell: int, width: int, height: int,
               threshold: float = 0.5, min_cells: int = 1) -> list[Box]:
    """Connected regions of one class's heat at or above ``threshold``, as boxes."""
    mask = np.nan_to_num(heat, nan=-1.0) >= threshold
    regions, count = ndimage.label(mask)
    boxes: list[Box] = []
    for index, found in enumerate(ndimage.find_objects(regions), start=1):
        if found is None:
            continue
        rows, cols = found
        inside = regions[found] == index
        cells = int(inside.sum())
        if cells < min_cells:
            continue
        values = heat[found][inside]
        x0, y0 = cols.start * cell, rows.start * cell
        x1, y1 = min(cols.stop * cell, width), min(rows.stop * cell, height)
        boxes.append(Box(label, int(x0), int(y0), int(x1 - x0), int(y1 - y0),
                         float(values.max()), float(values.mean()), cells))
    boxes.sort(key=lambda b: -b.score)
    return boxes


def classes_to_draw(labels: Sequence[str], scores: np.ndarray, settings: HeatmapSettings) -> list[int]:
    """Indices of the classes that get heat maps and boxes: not background, best first."""
    candidates = [i for i, name in enumerate(labels) if name != settings.background_class]
    candidates.sort(key=lambda i: -float(np.nan_to_num(scores[i], nan=-1.0)) if len(scores) else 0)
    return candidates[: settings.max_classes]


# --------------------------------------------------------------------------- drawing


def colorize(heat: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """Heat in [0, 1] as uint8 RGBA; NaN cells fully transparent."""
    from matplotlib import colormaps

    rgba = colormaps[cmap](np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0))
    rgba[..., 3] = np.where(np.isnan(heat), 0.0, 1.0)
    return (rgba * 255).round().astype(np.uint8)


def overlay_png(
    base: np.ndarray | None,
    heat: np.ndarray,
    cell: int,
    boxes: Sequence[Box],
    width: int,
    height: int,
    settings: HeatmapSettings,
    title: str | None = None,
) -> bytes:
    """The heat map blended over a downscaled copy of the original, boxes outlined; PNG bytes."""
    scale = min(1.0, settings.overlay_max_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if base is None:
        canvas = Image.new("RGB", size, (128, 128, 128))
    else:
        canvas = Image.fromarray(base).convert("RGB").resize(size, Image.Resampling.BILINEAR)
    colours = colorize(heat)
    # Each overlay pixel takes the colour of the cell under its centre in image coordinates.
    rows = np.minimum(((np.arange(size[1]) + 0.5) / scale // cell).astype(np.int64), heat.shape[0] - 1)
    cols = np.minimum(((np.arange(size[0]) + 0.5) / scale // cell).astype(np.int64), heat.shape[1] - 1)
    layer = colours[rows[:, None], cols[None, :]].astype(np.float64)
    alpha = layer[..., 3:4] / 255.0 * settings.alpha
    blended = np.asarray(canvas, dtype=np.float64) * (1 - alpha) + layer[..., :3] * alpha
    out = Image.fromarray(np.clip(blended, 0, 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for box in boxes:
        draw.rectangle(
            [box.x * scale, box.y * scale, (box.x + box.w) * scale - 1, (box.y + box.h) * scale - 1],
            outline=(0, 255, 0), width=max(1, round(2 * max(size) / 1024)),
        )
    if title:
        draw.text((4, 4), title, fill=(255, 255, 255))
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


# --------------------------------------------------------------------------- box metrics


def iou(a: Box | Sequence[float], b: Box | Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = (a.x, a.y, a.w, a.h) if isinstance(a, Box) else a
    bx, by, bw, bh = (b.x, b.y, b.w, b.h) if isinstance(b, Box) else b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def match_boxes(
    predicted: Sequence[Sequence[float]], truth: Sequence[Sequence[float]], min_iou: float = 0.3
) -> dict[str, float]:
    """Greedy one-to-one matching by IoU (highest first), as detection benchmarks do.

    Returns true/false positives, misses, precision, recall and F1 of the boxes, and
    the mean IoU of the matches.
    """
    pairs = sorted(
        ((iou(p, t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth)), reverse=True
    )
    used_p: set[int] = set()
    used_t: set[int] = set()
    matched: list[float] = []
    for value, i, j in pairs:
        if value < min_iou:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        matched.append(value)
    tp = len(matched)
    fp, fn = len(predicted) - tp, len(truth) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "min_iou": min_iou, "predicted": len(predicted), "truth": len(truth), "true_positives": tp,
        "false_positives": fp, "false_negatives": fn, "precision": precision, "recall": recall, "f1": f1,
        "mean_iou": float(np.mean(matched)) if matched else math.nan,
    }
