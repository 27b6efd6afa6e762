"""Resize modes (exact geometry) and normalisation (exact values, NCHW float32 contiguous)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sparkvision.config import NORMALIZATION_PRESETS, PreprocessConfig
from sparkvision.preprocess import Normalizer, resize_image
from sparkvision.preprocess.transforms import scaled_size, to_array


def coordinates(width: int, height: int) -> Image.Image:
    """R = x, G = y, B = 7: every pixel says where it came from (width, height <= 256)."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, :, 0] = np.arange(width)[None, :]
    arr[:, :, 1] = np.arange(height)[:, None]
    arr[:, :, 2] = 7
    return Image.fromarray(arr)


def test_resize_squashes_to_exactly_the_target():
    # 200 x 20 into 40 x 40: x shrinks 5 times, y stretches 2 times (aspect changes).
    config = PreprocessConfig(size=(40, 40), resize_mode="resize", interpolation="nearest")
    out = to_array(resize_image(coordinates(200, 20), config))
    assert out.shape == (40, 40, 3)
    # Nearest neighbour samples pixel centres: x = floor((j + 0.5) * 200 / 40).
    assert out[0, :, 0].tolist() == [int((j + 0.5) * 5) for j in range(40)]
    assert out[:, 0, 1].tolist() == [int((i + 0.5) * 0.5) for i in range(40)]
    assert (out[:, :, 2] == 7).all()


def test_center_crop_without_scaling_cuts_the_exact_centre():
    # crop_pct 0.5 makes the shorter side 100 = the image's own, so only the crop acts.
    config = PreprocessConfig(size=(50, 50), resize_mode="center_crop", crop_pct=0.5, interpolation="nearest")
    assert scaled_size(250, 100, config) == (250, 100)
    out = to_array(resize_image(coordinates(250, 100), config))
    assert out.shape == (50, 50, 3)
    assert out[0, :, 0].tolist() == list(range(100, 150))
    assert out[:, 0, 1].tolist() == list(range(25, 75))


def test_center_crop_scales_the_shorter_side_then_crops():
    config = PreprocessConfig(size=(50, 50), resize_mode="center_crop", crop_pct=1.0, interpolation="nearest")
    assert scaled_size(200, 100, config) == (100, 50)
    out = to_array(resize_image(coordinates(200, 100), config))
    assert out[0, :, 0].tolist() == [51 + 2 * j for j in range(50)]  # resized column 25 + j
    # The timm convention: 224 with crop_pct 0.875 resizes the shorter side to 256.
    assert scaled_size(400, 300, PreprocessConfig(resize_mode="center_crop")) == (341, 256)


@pytest.mark.parametrize(("width", "height"), [(100, 50), (50, 100), (64, 64), (10, 3)])
def test_letterbox_keeps_aspect_and_pads_symmetrically(width, height):
    config = PreprocessConfig(size=(64, 64), resize_mode="letterbox", pad_value=7)
    img = Image.new("RGB", (width, height), (200, 100, 50))
    out = to_array(resize_image(img, config))
    assert out.shape == (64, 64, 3)
    scale = min(64 / width, 64 / height)
    new_w, new_h = round(width * scale), round(height * scale)
    left, top = (64 - new_w) // 2, (64 - new_h) // 2
    inside = np.zeros((64, 64), dtype=bool)
    inside[top: top + new_h, left: left + new_w] = True
    assert (out[inside] == [200, 100, 50]).all()
    assert (out[~inside] == 7).all()
    assert inside.sum() == new_w * new_h


def test_letterbox_on_grey_images():
    config = PreprocessConfig(size=(8, 16), channels=1, mean=(0.5,), std=(0.5,), resize_mode="letterbox",
                              pad_value=3)
    out = to_array(resize_image(Image.new("L", (4, 4), 90), config))
    assert out.shape == (8, 16, 1)
    assert (out[:, 4:12, 0] == 90).all() and (out[:, :4, 0] == 3).all() and (out[:, 12:, 0] == 3).all()


@pytest.mark.parametrize("preset", sorted(NORMALIZATION_PRESETS))
def test_normalizer_matches_the_formula_per_channel(preset):
    mean, std = NORMALIZATION_PRESETS[preset]
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    batch[0, 0, 0] = [0, 128, 255]
    out = Normalizer(mean, std)(batch)
    assert out.dtype == np.float32 and out.shape == (4, 3, 5, 6) and out.flags.c_contiguous
    expected = (batch.transpose(0, 3, 1, 2) / 255.0 - np.array(mean)[None, :, None, None]) / np.array(std)[
        None, :, None, None]
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)


def test_inception_preset_spans_minus_one_to_one_and_grey_preset_averages():
    out = Normalizer(*NORMALIZATION_PRESETS["inception"])(np.array([[[[0, 255, 0]]]], dtype=np.uint8))
    assert out[0, :, 0, 0].tolist() == [-1.0, 1.0, -1.0]
    grey = PreprocessConfig.preset("imagenet", channels=1)
    assert grey.mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),))
    assert PreprocessConfig.preset("imagenet").std == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="unknown normalisation preset"):
        PreprocessConfig.preset("nope")


def test_normalizer_rejects_float_input():
    with pytest.raises(ValueError, match="uint8 NHWC"):
        Normalizer((0.5,), (0.5,))(np.zeros((1, 2, 2, 1), dtype=np.float32))


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        PreprocessConfig(channels=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mean/std need 1 values"):
        PreprocessConfig(channels=1)
    with pytest.raises(ValueError, match="resize_mode"):
        PreprocessConfig(resize_mode="stretch")  # type: ignore[arg-type]
    config = PreprocessConfig.preset("imagenet", size=(96, 128), resize_mode="letterbox")
    assert PreprocessConfig.from_dict(config.to_dict()) == config
