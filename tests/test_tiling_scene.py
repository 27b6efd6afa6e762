"""Must-show: boxes found on a synthetic scene cover the planted objects; the CLI end to end.

The scene (real Fashion-MNIST items on a terrain, test-split items) and the classifier
(logistic regression on EfficientNet-Lite0 features of windows from separate training
scenes with training-split items) are rebuilt here from the seeds: nothing is cached.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sparkvision.cli.main import main
from sparkvision.config import HeatmapSettings
from sparkvision.models.model_dir import load_card
from sparkvision.testing.synthetic_scenes import make_scene, render, train_object_classifier
from sparkvision.tiling.aggregate import aggregate_tiles
from sparkvision.tiling.classify import classify_tiles
from sparkvision.tiling.grid import grid
from sparkvision.tiling.heatmap import match_boxes
from sparkvision.tiling.tiles import list_sources, tile


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("detector")
    metrics = train_object_classifier(model_dir)
    assert metrics["held_out_accuracy"] >= 0.9  # a real classifier, checked on windows it did not see
    return model_dir


@pytest.mark.slow
def test_boxes_cover_the_planted_objects(spark, detector, tmp_path):
    spec = make_scene(4096, 4096, 10, seed=2)
    Image.fromarray(render(spec)).save(tmp_path / "scene.png")
    tiles = tile(list_sources(spark, str(tmp_path / "scene.png")))  # default settings: 224 px, overlap 0.1
    scored = classify_tiles(tiles, detector)
    labels = load_card(detector).labels
    images = aggregate_tiles(scored, labels, HeatmapSettings(background_class="background")).collect()
    assert len(images) == 1 and images[0]["prediction"] == "object" and images[0]["scored"] == 441
    found = [(b["x"], b["y"], b["w"], b["h"]) for b in images[0]["boxes"]]
    metrics = match_boxes(found, spec.boxes, min_iou=0.3)
    print("synthetic scene box metrics:", json.dumps(metrics))
    assert metrics["recall"] >= 0.9
    assert metrics["precision"] >= 0.8


@pytest.mark.slow
def test_tile_and_heatmap_commands_end_to_end(spark, detector, tmp_path, capsys):
    spec = make_scene(1800, 1000, 2, seed=5)
    positions = len(grid(1800, 1000, 224, 0.1))
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    pixels = render(spec)
    pixels[700:] = (40, 60, 90)  # a flat strip: the last row of tiles (y 776-1000) is background
    Image.fromarray(pixels).save(scenes / "field.png")
    (scenes / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 40)
    assert main(["tile", str(scenes), "--out", str(tmp_path / "tiles"), "--skip-background", "2"]) == 0
    tiled = json.loads(capsys.readouterr().out)
    assert tiled["sources"] == 2 and tiled["source_errors"] == 1 and tiled["tiles"] == positions == 45
    assert tiled["background"] == 9 and tiled["kept"] == 36

    assert main(["heatmap", "--tiles", str(tmp_path / "tiles"), "--model", str(detector), "--out",
                 str(tmp_path / "out"), "--background-class", "background", "--keep-tile-predictions"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 2 and summary["images_with_errors"] == 1 and summary["scored"] == 36
    assert summary["background"] == 9 and summary["tile_errors"] == 0
    boxes = json.loads((tmp_path / "out" / "boxes.json").read_text())
    metrics = match_boxes([(b["x"], b["y"], b["w"], b["h"]) for b in boxes], spec.boxes, 0.3)
    assert metrics["recall"] == 1.0
    overlay = Image.open(next((tmp_path / "out" / "heatmaps").glob("field*__object.png")))
    assert overlay.size == (1024, 569)  # the longest side downscaled to 1024
    images = spark.read.parquet(str(tmp_path / "out" / "images"))
    assert {r["error"] is None for r in images.collect()} == {True, False}  # the broken TIFF is one error row
    assert spark.read.parquet(str(tmp_path / "out" / "tile_predictions")).count() == 45 + 1
    heat = np.load(next((tmp_path / "out" / "heatmaps").glob("field*.npz")))
    assert heat["heat"].shape[0] == 1 and str(heat["classes"][0]) == "object"
