"""Mode conversion rules, checked pixel by pixel against hand-worked values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.preprocess import to_model_mode


def px(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    return arr[:, :, None] if arr.ndim == 2 else arr


def test_grey_is_replicated_for_rgb_and_kept_for_grey_models():
    grey = Image.fromarray(np.array([[0, 1, 128, 255]], dtype=np.uint8))
    rgb = to_model_mode(grey, 3)
    assert rgb.mode == "RGB"
    assert px(rgb).tolist() == [[[0, 0, 0], [1, 1, 1], [128, 128, 128], [255, 255, 255]]]
    assert to_model_mode(grey, 1) is grey


def test_rgb_to_one_channel_is_itu601_luma_and_grey_stays_exact():
    rgb = Image.fromarray(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [77, 77, 77]]], dtype=np.uint8))
    luma = px(to_model_mode(rgb, 1))[0, :, 0].tolist()
    expected = [(19595 * r + 38470 * g + 7471 * b + 32768) >> 16 for r, g, b in
                [(255, 0, 0), (0, 255, 0), (0, 0, 255), (77, 77, 77)]]
    assert luma == expected == [76, 150, 29, 77]


def test_bilevel_becomes_0_and_255():
    img = Image.fromarray(np.array([[False, True]])).convert("1")
    assert img.mode == "1"
    assert px(to_model_mode(img, 1))[0, :, 0].tolist() == [0, 255]
    assert px(to_model_mode(img, 3))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_rgba_is_composited_over_white_not_truncated():
    # Fully transparent pixels hide a colour (red); half-transparent blue mixes with white.
    rgba = Image.fromarray(np.array([[[255, 0, 0, 0], [0, 0, 255, 128], [10, 20, 30, 255]]], dtype=np.uint8))
    out = px(to_model_mode(rgba, 3))[0].astype(int)
    assert out[0].tolist() == [255, 255, 255]
    expected_blue = [round(255 * (1 - 128 / 255)), round(255 * (1 - 128 / 255)), 255]
    assert np.abs(out[1] - expected_blue).max() <= 1
    assert out[2].tolist() == [10, 20, 30]
    black = px(to_model_mode(rgba, 3, background=(0, 0, 0)))[0]
    assert black[0].tolist() == [0, 0, 0]


def test_la_is_composited_and_gives_one_or_three_channels():
    la = Image.fromarray(np.array([[[100, 0], [100, 255], [0, 128]]], dtype=np.uint8), mode="LA")
    grey = px(to_model_mode(la, 1))[0, :, 0].astype(int)
    assert grey[0] == 255 and grey[1] == 100
    assert abs(grey[2] - round(255 * (1 - 128 / 255))) <= 1
    rgb = px(to_model_mode(la, 3))[0]
    assert (rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all()
    assert rgb[:, 0].astype(int).tolist() == grey.tolist()
    premultiplied = la.convert("La")
    assert px(to_model_mode(premultiplied, 1))[0, 1, 0] == 100


def test_palette_without_transparency_expands_through_the_palette():
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0, 0, 0] * 254)
    img.putpixel((1, 0), 1)
    assert px(to_model_mode(img, 3))[0].tolist() == [[10, 20, 30], [200, 100, 50]]


def test_palette_with_transparency_index_and_alpha_table():
    from image_cases import palette_with_transparency

    img = Image.open(__import__("io").BytesIO(palette_with_transparency()))
    out = px(to_model_mode(img, 3))
    assert out[0, 0].tolist() == [255, 255, 255]  # index 0 is transparent (black underneath)
    assert out[0, 7].tolist() == [255, 0, 0]
    # Per-index alpha (PNG tRNS table): index 1 half transparent.
    img2 = Image.new("P", (2, 1))
    img2.putpalette([0, 0, 0, 0, 0, 0] + [0, 0, 0] * 254)
    img2.putpixel((1, 0), 1)
    img2.info["transparency"] = bytes([255, 128])
    out2 = px(to_model_mode(img2, 3))[0].astype(int)
    assert out2[0].tolist() == [0, 0, 0]
    assert np.abs(out2[1] - 127).max() <= 1


def test_cmyk_uses_the_multiplicative_ink_formula():
    img = Image.new("CMYK", (3, 1))
    values = [(0, 255, 255, 0), (50, 0, 0, 100), (0, 0, 0, 255)]
    for x, value in enumerate(values):
        img.putpixel((x, 0), value)
    out = px(to_model_mode(img, 3))[0].tolist()
    expected = [[round(255 * (1 - c / 255) * (1 - k / 255)) for c in (c_, m, y)] for c_, m, y, k in values]
    assert out == expected == [[255, 0, 0], [125, 155, 155], [0, 0, 0]]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_sixteen_bit_maps_the_full_range_linearly(mode):
    values = np.array([[0, 257, 32768, 65535, 514, 1000]], dtype=np.uint16)
    if mode == "I":
        img = Image.fromarray(values.astype(np.int32), mode="I")
    else:  # as a decoder produces them (Pillow's convert() to I;16B would clip at 255)
        order = ">u2" if mode == "I;16B" else "<u2"
        img = Image.frombytes(mode, (6, 1), values.astype(order).tobytes())
    assert img.mode == mode
    out = px(to_model_mode(img, 1))[0, :, 0].tolist()
    assert out == [0, 1, 128, 255, 2, 4]  # round(v / 257)
    assert px(to_model_mode(img, 3))[0, 2].tolist() == [128, 128, 128]


def test_int32_values_outside_sixteen_bits_are_clipped():
    img = Image.fromarray(np.array([[-5, 70000, 65535]], dtype=np.int32), mode="I")
    assert px(to_model_mode(img, 1))[0, :, 0].tolist() == [0, 255, 255]


def test_float_images_unit_range_or_byte_range():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0, -0.2]], dtype=np.float32), mode="F")
    assert px(to_model_mode(unit, 1))[0, :, 0].tolist() == [0, 128, 255, 0]
    byte = Image.fromarray(np.array([[0.0, 127.6, 255.0, 300.0, np.nan]], dtype=np.float32), mode="F")
    assert px(to_model_mode(byte, 1))[0, :, 0].tolist() == [0, 128, 255, 255, 0]


def test_other_colour_spaces_go_through_pillow():
    ycc = Image.new("YCbCr", (1, 1), (128, 128, 128))
    assert px(to_model_mode(ycc, 3))[0, 0].tolist() == [128, 128, 128]
    hsv = Image.new("HSV", (1, 1), (0, 255, 255))
    assert px(to_model_mode(hsv, 3))[0, 0].tolist() == [255, 0, 0]


def test_a_mode_pillow_cannot_convert_is_an_unsupported_error():
    class Odd:
        mode = "XYZ"
        info: dict = {}

        def convert(self, mode):
            raise ValueError(f"conversion from XYZ to {mode} not supported")

    with pytest.raises(ImageError) as err:
        to_model_mode(Odd(), 3)  # type: ignore[arg-type]
    assert err.value.kind == ErrorKind.UNSUPPORTED and "XYZ" in err.value.detail
