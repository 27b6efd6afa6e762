"""Detection on huge images: tile boxes to global pixels, one box per object across tile borders,
the screening cascade, and the ``tile --model`` command end to end.

The merge rules are checked first with an *oracle* detector (each tile reports exactly
the part of every object it shows: what a perfect detector would) on tile grids from
``sparkvision.tiling.grid``, so the geometry is tested apart from any model. The Spark
tests then run a real FCOS-Lite detector, fitted in the fixture on windows of separate
training scenes, on a synthetic scene whose objects partly straddle tile borders.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparkvision.detection.boxes import box_iou
from sparkvision.tiling.grid import grid
from sparkvision.tiling.merge import (
    MergeSettings,
    TileRegion,
    cut_by_tile,
    edge_slack,
    merge_boxes,
    to_global,
)

# --------------------------------------------------------------------------- geometry, no model


def test_to_global_scales_by_level_and_clips_to_the_covered_region():
    # A level-1 tile of 100 px covering x 400..600, y 0..150 of a 600 x 150 image (padded below).
    tile = TileRegion(x=400, y=0, w=200, h=150, level=1, size=100, image_width=600, image_height=150)
    boxes = np.array([[10, 10, 20, 30], [90, 60, 120, 99], [0, 80, 50, 100]], dtype=float)
    out, kept = to_global(boxes, tile)
    assert kept.tolist() == [True, True, False]  # the last box lies in the padding (y >= 75 tile px)
    assert out.tolist() == [[420, 20, 440, 60], [580, 120, 600, 150]]


def test_only_inner_tile_edges_cut_boxes():
    tile = TileRegion(x=0, y=80, w=128, h=128, level=0, size=128, image_width=256, image_height=208)
    boxes = np.array([
        [0, 100, 30, 130],  # on the image's left edge: whole
        [100, 120, 128, 140],  # on the tile's right edge, inside the image: cut
        [40, 80, 60, 100],  # on the tile's top edge, y = 80 > 0: cut
        [40, 190, 60, 208],  # on the bottom edge, which is the image's: whole
        [40, 120, 60, 140],  # inside
    ], dtype=float)
    assert cut_by_tile(boxes, tile, 0.02).tolist() == [False, True, True, False, False]


def test_merge_hand_worked_cases():
    whole, fragment = [100, 100, 140, 130], [100, 100, 112, 130]  # the fragment: a tile edge at x = 112
    boxes = np.array([fragment, whole, [300, 300, 340, 340], [300, 300, 340, 340], [500, 500, 560, 540],
                      [500, 500, 560, 540]], dtype=float)
    scores = np.array([0.9, 0.6, 0.8, 0.7, 0.5, 0.4])
    labels = np.array(["a", "a", "a", "a", "a", "b"])
    cut = np.array([True, False, False, False, False, False])
    out, out_scores, out_labels = merge_boxes(boxes, scores, labels, cut, MergeSettings())
    # The whole box wins over its better-scoring fragment; an exact duplicate goes; other classes stay.
    assert out.tolist() == [[300, 300, 340, 340], [100, 100, 140, 130], [500, 500, 560, 540], [500, 500, 560, 540]]
    assert out_scores.tolist() == [0.8, 0.6, 0.5, 0.4] and out_labels.tolist() == ["a", "a", "a", "b"]

    # Two fragments of an object larger than the overlap join into their union, with the best score,
    # when they share more than ios_threshold of the smaller (here 35 x 36 of 55 x 36: 0.64).
    left, right = [10, 10, 70, 50], [35, 12, 90, 48]
    out, out_scores, _ = merge_boxes(np.array([left, right], float), np.array([0.5, 0.7]), np.array([0, 0]),
                                     np.array([True, True]))
    assert out.tolist() == [[10, 10, 90, 50]] and out_scores.tolist() == [0.7]
    apart, _, _ = merge_boxes(np.array([left, right], float), np.array([0.5, 0.7]), np.array([0, 0]),
                              np.array([True, True]), MergeSettings(ios_threshold=0.7))
    assert len(apart) == 2

    # Whole boxes are never merged by containment: a small object on a large one of its class stays.
    nested = np.array([[0, 0, 100, 100], [10, 10, 30, 30]], float)
    out, _, _ = merge_boxes(nested, np.array([0.9, 0.8]), np.array([0, 0]), np.array([False, False]))
    assert len(out) == 2
    assert merge_boxes(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), np.zeros(0, bool))[0].shape == (0, 4)


def _oracle(objects: np.ndarray, width: int, height: int, size: int, overlap: float, rng, jitter: float = 0.0):
    """What a perfect detector reports per tile: the visible part of every object, in tile pixels."""
    level = grid(width, height, size, overlap)
    boxes, scores, cut, slack = [], [], [], []
    for t in level.tiles():
        region = TileRegion(t.x, t.y, t.w, t.h, 0, size, width, height)
        local = []
        for obj in objects:
            x1, y1 = max(obj[0], t.x), max(obj[1], t.y)
            x2, y2 = min(obj[2], t.x + t.w), min(obj[3], t.y + t.h)
            if x2 - x1 >= 3 and y2 - y1 >= 3:  # a detector misses slivers
                local.append([x1 - t.x, y1 - t.y, x2 - t.x, y2 - t.y])
        if not local:
            continue
        local = np.asarray(local, float) + rng.uniform(-jitter, jitter, (len(local), 4))
        found, kept = to_global(local, region)
        boxes.append(found)
        scores.append(rng.uniform(0.3, 1.0, len(found)))
        cut.append(cut_by_tile(found, region, 0.02))
        slack.append(np.full(len(found), edge_slack(region, 0.02)))
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(cut), np.concatenate(slack)


def _random_objects(rng, width, height, count, sides):
    placed = []
    while len(placed) < count:
        w, h = rng.integers(*sides, size=2)
        x, y = rng.integers(0, width - w), rng.integers(0, height - h)
        box = [x, y, x + w, y + h]
        if all(box_iou(np.array([box]), np.array([p]))[0, 0] == 0 and
               (x > p[2] + 4 or p[0] > x + w + 4 or y > p[3] + 4 or p[1] > y + h + 4) for p in placed):
            placed.append(box)
    return np.asarray(placed, dtype=float)


@pytest.mark.parametrize(("jitter", "min_iou"), [(0.0, 0.999), (1.5, 0.5)])
def test_an_oracle_detector_reports_every_object_once_when_the_overlap_holds_it(jitter, min_iou):
    """Objects up to the overlap in size, anywhere (many across tile borders): one box each."""
    rng = np.random.default_rng(3)
    width, height, size, overlap = 900, 700, 128, 0.375  # 48 px overlap
    for _ in range(5):
        # From 20 px: two whole copies of an object, each edge off by up to 1.5 px, still have IoU > 0.5.
        objects = _random_objects(rng, width, height, 40, (20, 48))
        boxes, scores, cut, slack = _oracle(objects, width, height, size, overlap, rng, jitter)
        assert cut.any() and len(boxes) > len(objects)  # there were fragments and duplicates to remove
        out, _, _ = merge_boxes(boxes, scores, np.zeros(len(boxes), int), cut, MergeSettings(), slack)
        iou = box_iou(objects, out)
        assert len(out) == len(objects)  # as many boxes as objects, and each object has its own:
        assert (iou.max(axis=1) > min_iou).all() and (iou.max(axis=0) > min_iou).all()


def test_an_oracle_detector_joins_objects_larger_than_the_overlap():
    rng = np.random.default_rng(4)
    width, height, size, overlap = 700, 700, 128, 0.25  # 32 px overlap, objects up to 64
    objects = _random_objects(rng, width, height, 25, (40, 64))
    boxes, scores, cut, slack = _oracle(objects, width, height, size, overlap, rng)
    out, _, _ = merge_boxes(boxes, scores, np.zeros(len(boxes), int), cut, MergeSettings(), slack)
    iou = box_iou(objects, out)
    assert (iou.max(axis=1) > 0.85).all()
    assert len(out) == len(objects)


# --------------------------------------------------------------------------- a real detector on a scene

TILE, OVERLAP = 128, 0.375  # 48 px of overlap: every item (24-40 px) lies whole in some tile
SCENE = (576, 448)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from detection_helpers import colour_screen, scene_detector

    root = tmp_path_factory.mktemp("tile-models")
    metrics = scene_detector(root / "detector", size=TILE)
    assert metrics["last_loss"] < 0.5 * metrics["first_loss"]  # it learnt
    return root / "detector", colour_screen(root / "screen", TILE)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from PIL import Image

    from sparkvision.testing.synthetic_scenes import make_detection_scene, render

    spec = make_detection_scene(*SCENE, 9, seed=7, tiles=(TILE, OVERLAP))
    folder = tmp_path_factory.mktemp("tile-scenes")
    pixels = render(spec)
    Image.fromarray(pixels).save(folder / "field.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return spec, pixels, folder


def _truth(spec) -> tuple[np.ndarray, list[str]]:
    return np.array([[x, y, x + w, y + h] for x, y, w, h in spec.boxes], dtype=float), spec.labels


def _straddling(spec) -> int:
    """Objects that some tile of the grid cuts (so a naive merge would report them twice)."""
    level = grid(*SCENE, TILE, OVERLAP)
    boxes, _ = _truth(spec)
    count = 0
    for b in boxes:
        for t in level.tiles():
            inside = b[0] < t.x + t.w and t.x < b[2] and b[1] < t.y + t.h and t.y < b[3]
            whole = t.x <= b[0] and b[2] <= t.x + t.w and t.y <= b[1] and b[3] <= t.y + t.h
            if inside and not whole:
                count += 1
                break
    return count


def _score(row, spec) -> dict:
    """Class-aware recall at IoU 0.5, and duplicates: boxes of an object's class lying mostly (at
    least half) inside it beyond the first (a second whole box, or a fragment).

    Like NMS, merging is per class: an object the detector also scores as the other class
    keeps that box too, as ``detect`` would keep it on a small image.
    """
    truth, labels = _truth(spec)
    found = np.array([[b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in row["boxes"]], dtype=float).reshape(-1, 4)
    found_labels = [b["label"] for b in row["boxes"]]
    iou = box_iou(truth, found)
    same = np.array([[a == b for b in found_labels] for a in labels], dtype=bool).reshape(iou.shape)
    recalled = ((iou >= 0.5) & same).any(axis=1)
    lt = np.maximum(truth[:, None, :2], found[None, :, :2])
    rb = np.minimum(truth[:, None, 2:], found[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = (found[:, 2] - found[:, 0]) * (found[:, 3] - found[:, 1])
    inside = (inter >= 0.5 * area[None, :]) & same
    return {"recall": float(recalled.mean()), "duplicates": int(np.clip(inside.sum(axis=1) - 1, 0, None).sum()),
            "boxes": len(found), "recalled": recalled}


def _run(main, args, capsys) -> dict:
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_tile_detect_finds_each_object_once_and_the_screen_skips_empty_tiles(spark, models, scene, tmp_path, capsys):
    from sparkvision.cli.main import main
    from sparkvision.inference.predict import PREDICTIONS_MARKER

    detector, screen = models
    spec, pixels, folder = scene
    assert _straddling(spec) >= 3
    positions = len(grid(*SCENE, TILE, OVERLAP))
    common = ["tile", str(folder), "--model", str(detector), "--size", str(TILE), "--overlap", str(OVERLAP),
              "--score-threshold", "0.3"]

    plain = _run(main, [*common, "--out", str(tmp_path / "plain")], capsys)
    assert plain["images"] == 2 and plain["images_with_errors"] == 1 and plain["error_kinds"] == {"truncated": 1}
    assert plain["tiles"] == plain["detected"] == positions and plain["screened_out"] == 0
    assert plain["candidates"] > plain["boxes"]  # tiles saw objects more than once
    assert json.loads((tmp_path / "plain" / PREDICTIONS_MARKER).read_text())["kind"] == "detector"
    rows = {r["source"].rsplit("/", 1)[-1]: r for r in spark.read.parquet(str(tmp_path / "plain")).collect()}
    assert rows["broken.png"]["error"].startswith("truncated") and rows["broken.png"]["tiles"] == 0
    field = rows["field.png"]
    assert field["error"] is None and (field["image_width"], field["image_height"]) == SCENE
    plain_score = _score(field, spec)
    assert plain_score["recall"] >= 0.8, plain_score
    assert plain_score["duplicates"] == 0, plain_score

    # The screen: a tile passes when some pixel's channels spread by more than 110.5 / 255.
    level = grid(*SCENE, TILE, OVERLAP)
    spread = [int((pixels[t.y:t.y + t.h, t.x:t.x + t.w].max(-1).astype(int)
                   - pixels[t.y:t.y + t.h, t.x:t.x + t.w].min(-1)).max()) for t in level.tiles()]
    expected_out = sum(s <= 110 for s in spread)
    assert 0 < expected_out < positions

    screened = _run(main, [*common, "--screen", str(screen), "--screen-threshold", "0.5",
                           "--out", str(tmp_path / "screened")], capsys)
    assert screened["screened_out"] == expected_out and screened["detected"] == positions - expected_out
    assert screened["detect_seconds_per_tile"] > 0 and screened["screen_seconds"] > 0
    assert screened["detect_seconds_saved"] == pytest.approx(screened["detect_seconds_per_tile"] * expected_out)
    field = next(r for r in spark.read.parquet(str(tmp_path / "screened")).collect() if r["source"].endswith("field.png"))
    screened_score = _score(field, spec)
    assert screened_score["duplicates"] == 0
    # Every object lies whole in a tile the screen passes: the cascade finds what the detector alone does.
    assert screened_score["recalled"].tolist() == plain_score["recalled"].tolist()


def test_tile_detect_refuses_wrong_models_before_spark_starts(tmp_path):
    from detection_helpers import colour_screen

    from sparkvision.cli.main import main
    from sparkvision.config import PreprocessConfig
    from sparkvision.models.model_dir import ModelCard, save_card
    from sparkvision.tiling.detect import ScreenSettings, check_models

    screen = colour_screen(tmp_path / "screen", TILE)
    # Only the card is read before Spark starts: a card is all this detector needs here.
    detector = save_card(tmp_path / "detector", ModelCard(
        name="d", kind="detector", labels=["a"], preprocess=PreprocessConfig(resize_mode="letterbox")))
    out = str(tmp_path / "out")
    assert main(["tile", str(tmp_path), "--model", str(screen), "--out", out]) == 1  # a classifier is no detector
    assert main(["tile", str(tmp_path), "--screen", str(screen), "--out", out]) == 2  # a screen needs a detector
    with pytest.raises(ValueError, match="screen label"):
        check_models(detector, screen, ScreenSettings(labels=("cat",)))
    with pytest.raises(ValueError, match="must be a classifier"):
        check_models(detector, detector, ScreenSettings())
    assert not (tmp_path / "out").exists()
