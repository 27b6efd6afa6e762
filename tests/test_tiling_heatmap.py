"""Back onto the image: overlap averaging, image labels, boxes, overlays, box metrics (hand-worked cases)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sparkvision.config import HeatmapSettings
from sparkvision.tiling.aggregate import aggregate_image
from sparkvision.tiling.heatmap import (
    find_boxes,
    heat_raster,
    image_label,
    image_scores,
    iou,
    match_boxes,
    overlay_png,
)


def test_overlapping_tiles_are_averaged_cell_by_cell():
    # A 300 x 100 image, cells of 50 px; tile A covers x 0-200, tile B x 100-300.
    boxes = np.array([[0, 0, 200, 100], [100, 0, 200, 100]])
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    heat, count = heat_raster(boxes, probs, 300, 100, 50)
    assert count.tolist() == [[1, 1, 2, 2, 1, 1], [1, 1, 2, 2, 1, 1]]
    assert heat[1, 0].tolist() == pytest.approx([0.8, 0.8, 0.6, 0.6, 0.4, 0.4])  # (0.8 + 0.4) / 2 in the overlap
    assert heat[0, 0].tolist() == pytest.approx([0.2, 0.2, 0.4, 0.4, 0.6, 0.6])


def test_cells_no_scored_tile_covers_are_nan_and_edge_cells_use_their_clipped_centre():
    heat, count = heat_raster(np.array([[0, 0, 100, 100]]), np.array([[1.0]]), 230, 100, 100)
    # Cells x 0-100, 100-200, 200-230 (centre 215): only the first is covered.
    assert count.tolist() == [[1, 0, 0]]
    assert heat[0, 0, 0] == 1.0 and np.isnan(heat[0, 0, 1:]).all()
    heat, count = heat_raster(np.array([[0, 0, 216, 100]]), np.array([[1.0]]), 230, 100, 100)
    assert count.tolist() == [[1, 1, 1]]  # 215 < 216: the narrow edge cell is covered


def test_boxes_from_a_known_heat_map():
    heat = np.zeros((6, 8))
    heat[1:3, 1:4] = 0.9  # a 2 x 3 cell blob
    heat[4:6, 6:8] = 0.7  # a blob on the bottom-right edge
    heat[0, 7] = 0.6  # a single cell
    heat[5, 0] = np.nan
    boxes = find_boxes(heat, "object", cell=10, width=75, height=58, threshold=0.5)
    got = {(b.x, b.y, b.w, b.h, b.cells) for b in boxes}
    assert got == {(10, 10, 30, 20, 6), (60, 40, 15, 18, 4), (70, 0, 5, 10, 1)}  # clipped to 75 x 58
    assert boxes[0].score == pytest.approx(0.9)
    assert len(find_boxes(heat, "object", 10, 75, 58, threshold=0.5, min_cells=2)) == 2
    assert find_boxes(heat, "object", 10, 75, 58, threshold=0.95) == []


def test_image_scores_and_labels():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.8, 0.2]])
    labels = ["background", "object"]
    assert image_scores(probs, "max").tolist() == pytest.approx([0.9, 0.7])
    assert image_scores(probs, "mean").tolist() == pytest.approx([2.0 / 3, 1.0 / 3])
    assert image_scores(probs, "vote").tolist() == pytest.approx([2 / 3, 1 / 3])
    assert image_label(image_scores(probs, "max"), labels, HeatmapSettings(method="max")) == "background"
    with_bg = HeatmapSettings(method="max", background_class="background", threshold=0.5)
    assert image_label(image_scores(probs, "max"), labels, with_bg) == "object"  # one tile is enough
    strict = HeatmapSettings(method="mean", background_class="background", threshold=0.5)
    assert image_label(image_scores(probs, "mean"), labels, strict) == "background"
    assert image_label(image_scores(probs, "vote"), labels, HeatmapSettings(method="vote")) == "background"


def test_box_matching_metrics_hand_worked():
    truth = [(0, 0, 10, 10), (100, 100, 10, 10), (200, 200, 10, 10)]
    predicted = [(0, 0, 10, 20), (101, 101, 10, 10), (500, 500, 5, 5)]
    assert iou(predicted[0], truth[0]) == pytest.approx(0.5)
    m = match_boxes(predicted, truth, min_iou=0.3)
    assert (m["true_positives"], m["false_positives"], m["false_negatives"]) == (2, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert match_boxes(predicted, truth, min_iou=0.6)["true_positives"] == 1  # 81/119 = 0.68 only


def _tiles(rows):
    columns = ["source", "label", "page", "level", "x", "y", "w", "h", "image_width", "image_height",
               "background", "error", "probability"]
    return pd.DataFrame(rows, columns=columns)


def test_aggregate_image_labels_boxes_and_overlay():
    settings = HeatmapSettings(background_class="background", cell=50)
    group = _tiles([
        ["s", "x", 0, 0, 0, 0, 100, 100, 200, 100, False, None, [0.1, 0.9]],
        ["s", "x", 0, 0, 100, 0, 100, 100, 200, 100, False, None, [0.8, 0.2]],
        ["s", "x", 0, 1, 0, 0, 200, 100, 200, 100, False, None, [0.0, 1.0]],  # another level: ignored
    ])
    row = aggregate_image(group, ["background", "object"], settings, render=True)
    assert row["prediction"] == "object" and row["level"] == 0 and row["tiles"] == 2
    assert row["probability"] == pytest.approx([0.8, 0.9])
    assert [(b["x"], b["y"], b["w"], b["h"]) for b in row["boxes"]] == [(0, 0, 100, 100)]
    png = Image.open(io.BytesIO(row["overlays"][0]["png"]))
    assert png.size == (200, 100)
    assert np.load(io.BytesIO(row["heat"]))["heat"].shape == (1, 2, 4)


def test_aggregate_image_without_scored_tiles_is_accounted_for():
    settings = HeatmapSettings(background_class="background")
    error_only = _tiles([["s", None, None, None, None, None, None, None, None, None, False,
                          "corrupt: broken", None]])
    row = aggregate_image(error_only, ["background", "object"], settings)
    assert row["error"] == "corrupt: broken" and row["prediction"] is None
    all_background = _tiles([["s", None, 0, 0, 0, 0, 10, 10, 10, 10, True, None, None]])
    row = aggregate_image(all_background, ["background", "object"], settings)
    assert row["prediction"] == "background" and row["background"] == 1 and row["error"] is None
    row = aggregate_image(all_background, ["background", "object"], HeatmapSettings())
    assert row["prediction"] is None and row["error"].startswith("no_tiles:")


def test_overlay_colours_cells_where_they_are():
    heat = np.array([[1.0, np.nan]])
    base = np.zeros((10, 20, 3), np.uint8)
    png = overlay_png(base, heat, 10, [], 20, 10, HeatmapSettings(alpha=1.0))
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels[5, 2].sum() > 300 and pixels[5, 15].sum() == 0  # hot cell coloured, NaN cell untouched
