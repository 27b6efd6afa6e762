"""The Spark tiling step: every source accounted for, tiles equal crops, background counted, units split."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from sparkvision.config import TilingSettings
from sparkvision.io import load_images
from sparkvision.tiling.grid import grid
from sparkvision.tiling.tiles import Tiler, list_sources, read_tiles, tile, write_tiles

RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    (root / "a").mkdir()
    rgb = RNG.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    rgb[:, 600:] = 90  # a flat right part: background tiles
    tifffile.imwrite(root / "a" / "big.tif", rgb, tile=(128, 128), compression="zlib", photometric="rgb")
    png = RNG.integers(0, 256, (300, 260), dtype=np.uint8)
    Image.fromarray(png).save(root / "a" / "grey.png")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "empty.jpg").write_bytes(b"")
    return {"root": root, "rgb": rgb, "png": png}


def _decode(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def test_tile_accounts_for_every_source_and_tiles_equal_crops(spark, scenes):
    settings = TilingSettings(size=224, overlap=0.1, levels=(0, 1), background_std=1.0, rows_per_unit=1)
    rows = tile(list_sources(spark, str(scenes["root"])), settings).collect()
    by_source: dict[str, list] = {}
    for row in rows:
        by_source.setdefault(row["source"].rsplit("/", 1)[-1], []).append(row)
    assert set(by_source) == {"big.tif", "grey.png", "broken.png", "empty.jpg"}
    for bad, kind in [("broken.png", "truncated"), ("empty.jpg", "empty_file")]:
        assert len(by_source[bad]) == 1 and by_source[bad][0]["error"].startswith(kind)
        assert by_source[bad][0]["x"] is None and by_source[bad][0]["path"] == by_source[bad][0]["source"]

    big = by_source["big.tif"]
    expected = {lvl: len(grid(900, 700, 224, 0.1, lvl)) for lvl in (0, 1)}
    assert {lvl: sum(r["level"] == lvl for r in big) for lvl in (0, 1)} == expected
    assert len({r["path"] for r in big}) == len(big)  # unique tile paths
    for r in big:
        assert r["label"] == "a" and r["image_width"] == 900 and r["scale"] == 0.5 ** r["level"]
        if r["background"]:
            assert r["content"] is None and r["std"] < 1.0 and r["x"] >= 600 - 2**r["level"]
            continue
        pixels = _decode(r["content"])
        assert pixels.shape == (224, 224, 3)
        f = 2 ** r["level"]
        crop = r["content"] and rgb_level(scenes["rgb"], f)[r["y"] // f:(r["y"] + r["h"]) // f + (r["h"] % f > 0),
                                                             r["x"] // f:(r["x"] + r["w"]) // f + (r["w"] % f > 0)]
        assert np.array_equal(pixels[:crop.shape[0], :crop.shape[1]], crop)
        assert (pixels[crop.shape[0]:] == 0).all() and (pixels[:, crop.shape[1]:] == 0).all()  # padding
    assert sum(r["background"] for r in big) >= 2

    grey = [r for r in by_source["grey.png"] if r["level"] == 0]
    assert len(grey) == 4 and {r["mode"] for r in grey} == {"L"}  # 300 x 260 -> 2 x 2 tiles, shifted
    for r in grey:
        assert np.array_equal(_decode(r["content"]), scenes["png"][r["y"]:r["y"] + 224, r["x"]:r["x"] + 224])


def rgb_level(rgb: np.ndarray, f: int) -> np.ndarray:
    from sparkvision.tiling.pixels import box_reduce

    return box_reduce(rgb, f)


def test_units_split_a_scene_across_tasks_without_changing_the_tiles(spark, scenes):
    src = list_sources(spark, str(scenes["root"] / "a" / "big.tif"))
    one = tile(src, TilingSettings(size=128, rows_per_unit=100)).select("path", "content").collect()
    many = tile(src, TilingSettings(size=128, rows_per_unit=1), partitions=5)
    assert many.rdd.getNumPartitions() == 5
    assert sorted(map(tuple, one)) == sorted(map(tuple, many.select("path", "content").collect()))


def test_rows_with_bytes_tile_from_their_bytes(spark, scenes, tmp_path):
    images = load_images(spark, str(scenes["root"]), probe="header")
    rows = tile(images, size=200).where("source like '%grey.png'").collect()
    assert len(rows) == 4 and all(r["content"] for r in rows)
    # A built-in dataset has no files at all: bytes only.
    digits = tile(load_images(spark, "digits").limit(3), size=32).collect()
    assert len(digits) == 3 and all(_decode(r["content"]).shape == (32, 32) for r in digits)


def test_background_counts_in_the_written_manifest(spark, scenes, tmp_path):
    settings = TilingSettings(size=100, overlap=0.0, background_std=1.0)
    src = list_sources(spark, str(scenes["root"] / "a" / "big.tif"))
    manifest = write_tiles(spark, tile(src, settings), str(tmp_path / "tiles"), settings=settings)
    # Columns 600-899 are flat: tiles starting at x >= 600 are background (3 columns x 7 rows).
    assert (manifest.tiles, manifest.background, manifest.kept) == (63, 21, 42)
    assert manifest.per_level == {"0": {"tiles": 63, "kept": 42, "background": 21}}
    stored = json.loads((tmp_path / "tiles" / "_sparkvision_tiles.json").read_text())
    assert stored["background"] == 21 and stored["settings"]["background_std"] == 1.0
    assert read_tiles(spark, str(tmp_path / "tiles")).where("background").count() == 21


def test_tiler_is_a_persistable_spark_ml_stage(spark, scenes, tmp_path):
    stage = Tiler(size=128, overlap=0.25, levels=[0, 1], backgroundStd=2.0)
    stage.save(str(tmp_path / "tiler"))
    loaded = Tiler.load(str(tmp_path / "tiler"))
    assert loaded.settings() == stage.settings() and loaded.settings().background_std == 2.0
    out = loaded.transform(list_sources(spark, str(scenes["root"] / "a" / "grey.png")))
    assert out.where("level = 1").count() == len(grid(260, 300, 128, 0.25, 1))
