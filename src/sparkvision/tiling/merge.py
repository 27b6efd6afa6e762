"""Tile detections into one set of boxes per image: global coordinates, then duplicates merged.

A detector that reads a huge image tile by tile sees an object near a tile border two
ways: whole, in the tile that contains it, and cut, in its neighbour (or only cut, when
the object is larger than the tiles' overlap). Plain NMS does not remove the cut copy:
a fragment that shows a third of the object has an IoU of a third with the whole box.
The rules, applied per source image (and page):

1. **Global coordinates.** A box in pixels of a tile at pyramid level ``L`` that covers
   the full-resolution region ``x, y, w, h`` becomes ``x + b * 2**L``, clipped to that
   region (a padded tile's padding is not the image); nothing left, no box.
2. **Cut boxes.** A box within ``edge_margin`` (a fraction of the tile side, at least 2
   tile pixels) of a tile edge that is not an image edge may be a fragment.
3. **Merging**, per class, greedily: boxes are visited whole ones first, then cut ones,
   each group by descending score (a whole box is the better outline of an object
   whatever its score). A visited box is a duplicate of a kept box of its class, and
   dropped, when

   * their IoU is above ``iou_threshold``: the same object seen whole by two
     overlapping tiles (plain global NMS), or
   * one of the two is cut and their intersection covers more than ``ios_threshold``
     of the smaller box (intersection over smaller): a fragment lies inside the whole
     box, so its IoS is near 1 whatever its IoU. The kept box counts as reaching the
     edge margin further for this test, so a sliver that a detector places a pixel or
     two past the whole box's edge is still inside it. When both are cut (an object
     larger than the overlap, cut in every tile that sees it), the kept box grows to
     their union, so the fragments join into the object. Its score is the best of the two.

Why IoS only where a box is cut: two distinct objects of one class may nest or touch (a
platelet on a red cell is another class, but crowded cells of one class are common), and
IoS would merge them; only a cut box is suspected of being part of something else. Why
not simply drop cut boxes: that is enough only when every object fits in the overlap;
larger objects are cut in every tile that sees them and would be lost.

What it guarantees: when the overlap (in full-resolution pixels) is at least the largest
object's side, every object lies whole in some tile (tile starts are ``stride`` apart
and each tile reaches ``overlap`` beyond the next start), so its whole box is kept
first and every fragment of it lies inside that box: the object is reported once.
``tests/test_tiling_detect.py`` checks this on a scene with objects across tile borders.
This module is NumPy only: no Spark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparkvision.detection.boxes import box_area


@dataclass(frozen=True)
class MergeSettings:
    """How tile detections of one image are merged (see the module docstring)."""

    #: Same-class boxes overlapping by more IoU are one object (the decoder's NMS threshold).
    iou_threshold: float = 0.5
    #: A cut box whose intersection with a same-class box covers more of the smaller one is part of it.
    ios_threshold: float = 0.6
    #: A box this close to an inner tile edge (fraction of the tile side) counts as cut.
    edge_margin: float = 0.02

    def __post_init__(self) -> None:
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold!r}")
        if not 0.0 < self.ios_threshold <= 1.0:
            raise ValueError(f"ios_threshold must be in (0, 1], got {self.ios_threshold!r}")
        if not 0.0 <= self.edge_margin < 0.5:
            raise ValueError(f"edge_margin is a fraction of the tile side in [0, 0.5), got {self.edge_margin!r}")


@dataclass(frozen=True)
class TileRegion:
    """Where a tile's pixels come from: the full-resolution region ``x, y, w, h`` at ``level``."""

    x: int
    y: int
    w: int
    h: int
    level: int
    size: int  # tile side in pixels of its level
    image_width: int
    image_height: int

    @property
    def factor(self) -> int:
        return 2**self.level


def to_global(boxes: np.ndarray, tile: TileRegion) -> tuple[np.ndarray, np.ndarray]:
    """(global boxes, kept) for ``boxes`` (K, 4) x1, y1, x2, y2 in the tile's pixels.

    ``kept`` marks the input boxes that still have an area once clipped to the region the
    tile covers.
    """
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * tile.factor
    out[:, 0::2] = np.clip(out[:, 0::2] + tile.x, tile.x, tile.x + tile.w)
    out[:, 1::2] = np.clip(out[:, 1::2] + tile.y, tile.y, tile.y + tile.h)
    kept = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[kept], kept


def edge_slack(tile: TileRegion, edge_margin: float) -> float:
    """The edge margin of a tile in full-resolution pixels: at least 2 pixels of its level."""
    return max(2.0, edge_margin * tile.size) * tile.factor


def cut_by_tile(boxes: np.ndarray, tile: TileRegion, edge_margin: float) -> np.ndarray:
    """Which global ``boxes`` of this tile touch one of its edges that is not an image edge."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    margin = edge_slack(tile, edge_margin)
    left, top = tile.x, tile.y
    right, bottom = tile.x + tile.w, tile.y + tile.h
    cut = np.zeros(len(boxes), dtype=bool)
    if left > 0:
        cut |= boxes[:, 0] <= left + margin
    if top > 0:
        cut |= boxes[:, 1] <= top + margin
    if right < tile.image_width:
        cut |= boxes[:, 2] >= right - margin
    if bottom < tile.image_height:
        cut |= boxes[:, 3] >= bottom - margin
    return cut


def merge_boxes(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, cut: np.ndarray, settings: MergeSettings | None = None,
    slack: np.ndarray | float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's tile detections (global boxes) merged: (boxes, scores, classes), best score first.

    ``classes`` may be indices or label strings; ``cut`` comes from :func:`cut_by_tile`
    and ``slack`` (per box, or one value) from :func:`edge_slack` of each box's tile.
    """
    settings = settings or MergeSettings()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    cut = np.asarray(cut, dtype=bool).reshape(-1)
    slack = np.broadcast_to(np.asarray(slack, dtype=np.float64), scores.shape)
    kept_boxes: list[np.ndarray] = []
    kept_scores: list[float] = []
    kept_classes: list = []
    for cls in np.unique(classes):
        members = np.flatnonzero(classes == cls)
        # Whole boxes first, then cut ones; best score first within each (stable on ties).
        order = members[np.lexsort((-scores[members], cut[members]))]
        group: list[np.ndarray] = []
        group_scores: list[float] = []
        group_cut: list[bool] = []
        for i in order:
            box = boxes[i]
            if group:
                kept = np.asarray(group)
                lt = np.maximum(kept[:, :2], box[:2])
                rb = np.minimum(kept[:, 2:], box[2:])
                wh = np.clip(rb - lt, 0, None)
                inter = wh[:, 0] * wh[:, 1]
                area_kept, area_box = box_area(kept), float(box_area(box))
                union = area_kept + area_box - inter
                iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
                # Whole boxes are visited first, so where either box is cut, box i is: its slack applies.
                lt = np.maximum(kept[:, :2] - slack[i], box[:2])
                rb = np.minimum(kept[:, 2:] + slack[i], box[2:])
                wh = np.clip(rb - lt, 0, None)
                smaller = np.minimum(area_kept, area_box)
                ios = np.minimum(np.divide(wh[:, 0] * wh[:, 1], smaller, out=np.zeros_like(inter), where=smaller > 0), 1)
                either_cut = np.asarray(group_cut) | bool(cut[i])
                duplicate = (iou > settings.iou_threshold) | (either_cut & (ios > settings.ios_threshold))
                if duplicate.any():
                    j = int(np.flatnonzero(duplicate)[0])
                    if group_cut[j] and cut[i]:  # two fragments: the kept one grows to the union
                        group[j] = np.concatenate([np.minimum(group[j][:2], box[:2]), np.maximum(group[j][2:], box[2:])])
                        group_scores[j] = max(group_scores[j], float(scores[i]))
                    continue
            group.append(box.copy())
            group_scores.append(float(scores[i]))
            group_cut.append(bool(cut[i]))
        kept_boxes.extend(group)
        kept_scores.extend(group_scores)
        kept_classes.extend([cls] * len(group))
    if not kept_boxes:
        return np.zeros((0, 4)), np.zeros(0), classes[:0]
    out_scores = np.asarray(kept_scores)
    order = np.argsort(-out_scores, kind="stable")
    return np.asarray(kept_boxes)[order], out_scores[order], np.asarray(kept_classes)[order]
