"""Tile geometry and pixel rules: coverage, overlap, edge rules, levels, box averaging, windowing."""

from __future__ import annotations

import numpy as np
import pytest

from sparkvision.config import TilingSettings
from sparkvision.tiling.grid import grid, level_size, starts
from sparkvision.tiling.pixels import box_reduce, pad_tile, tile_std, window_to_uint8
from sparkvision.tiling.tiler import parse_tile_path, tile_path

CASES = [(1000, 700, 224, 0.1), (224, 224, 224, 0.1), (225, 500, 224, 0.25), (100, 80, 224, 0.1),
         (4096, 3000, 256, 0.5), (999, 1001, 100, 0.0), (5000, 37, 224, 0.1)]


@pytest.mark.parametrize("edge", ["shift", "pad"])
@pytest.mark.parametrize(("width", "height", "size", "overlap"), CASES)
def test_tiles_cover_the_image_exactly_once_or_more(width, height, size, overlap, edge):
    g = grid(width, height, size, overlap, edge=edge)
    covered = np.zeros((height, width), dtype=np.int32)
    for t in g.tiles():
        assert 0 <= t.x and 0 <= t.y and t.x + t.w <= width and t.y + t.h <= height  # inside the image
        covered[t.y:t.y + t.h, t.x:t.x + t.w] += 1
    assert covered.min() >= 1, "a pixel no tile covers"
    assert len(list(g.tiles())) == g.rows * g.cols


@pytest.mark.parametrize(("width", "height", "size", "overlap"), CASES)
def test_neighbours_share_the_stated_overlap_and_shift_moves_only_the_last(width, height, size, overlap):
    stride = size - round(size * overlap)
    xs = starts(width, size, stride, "shift")
    if width <= size:
        assert xs == [0]
        return
    gaps = np.diff(xs)
    assert all(g == stride for g in gaps[:-1])
    assert 0 < gaps[-1] <= stride  # the shifted last tile overlaps at least as much
    assert xs[-1] + size == width  # ends exactly on the edge
    overlaps = [xs[i] + size - xs[i + 1] for i in range(len(xs) - 1)]
    assert all(o == size - stride for o in overlaps[:-1]) and overlaps[-1] >= size - stride


def test_pad_keeps_the_stride_and_sticks_out_by_less_than_a_stride():
    xs = starts(1000, 224, 202, "pad")
    assert xs == [0, 202, 404, 606, 808]
    assert xs[-1] + 224 >= 1000 and xs[-1] + 224 - 1000 < 202
    assert starts(1000, 224, 202, "shift") == [0, 202, 404, 606, 776]


def test_levels_map_back_to_full_resolution_coordinates():
    g = grid(1000, 700, 224, 0.1, level=2)  # level image 250 x 175
    assert g.level_size == level_size(1000, 700, 2) == (250, 175)
    tiles = list(g.tiles())
    assert [(t.x, t.y, t.w, t.h) for t in tiles] == [(0, 0, 896, 700), (104, 0, 896, 700)]
    assert all(t.x == t.lx * 4 for t in tiles)


def test_tile_paths_round_trip():
    path = tile_path("file:/data/scene #1.tif", 2, 1, 448, 0)
    assert parse_tile_path(path) == ("file:/data/scene #1.tif", {"page": 2, "level": 1, "x": 448, "y": 0})
    assert parse_tile_path("file:/data/a.png") == ("file:/data/a.png", {})


def test_settings_validate_and_derive_the_stride():
    assert TilingSettings(size=224, overlap=0.1).stride == 202
    with pytest.raises(ValueError, match="overlap"):
        TilingSettings(overlap=1.0)
    with pytest.raises(ValueError, match="edge"):
        TilingSettings(edge="wrap")


def _reference_reduce(arr, f):
    h, w = arr.shape[:2]
    out = np.zeros((-(-h // f), -(-w // f), *arr.shape[2:]))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.floor(arr[i * f:(i + 1) * f, j * f:(j + 1) * f].astype(np.float64).mean(axis=(0, 1)) + 0.5)
    return out.astype(arr.dtype)


@pytest.mark.parametrize("shape", [(37, 53, 3), (64, 64), (5, 3)])
@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_box_reduce_averages_blocks_and_partial_edge_blocks(shape, factor, dtype):
    rng = np.random.default_rng(factor)
    arr = rng.integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    assert np.array_equal(box_reduce(arr, factor), _reference_reduce(arr, factor))


def test_box_reduce_hand_worked():
    arr = np.array([[0, 2, 9], [4, 6, 9]], dtype=np.uint8)
    assert box_reduce(arr, 2).tolist() == [[3, 9]]  # (0+2+4+6)/4 = 3; the edge column averages 9 and 9


def test_dicom_linear_window_hand_worked():
    # c=40, w=400 (CT soft tissue): below c-0.5-(w-1)/2 = -160 -> 0, above 239 -> 255.
    values = np.array([-1000.0, -160.0, 39.5, 239.0, 3000.0])
    out = window_to_uint8(values, 40, 400)
    assert out[0] == 0 and out[-1] == 255
    assert out[2] == round(((39.5 - 39.5) / 399 + 0.5) * 255)  # the centre maps to mid-grey
    assert out[1] == round(((-160 - 39.5) / 399 + 0.5) * 255) == 0


def test_padding_and_background_statistic():
    tile = np.full((10, 20, 3), 7, np.uint8)
    padded = pad_tile(tile, 32, 0)
    assert padded.shape == (32, 32, 3) and padded[:10, :20].min() == 7 and padded[10:].max() == 0
    assert tile_std(tile, "RGB") == 0.0
    assert tile_std(np.broadcast_to(np.array([40, 60, 90], np.uint8), (8, 8, 3)), "RGB") == 0.0  # flat colour
    assert tile_std(np.array([[0, 65535]], np.uint16), "I;16") == pytest.approx(65535 / 2 / 257)
