"""ImagePreprocessor: bytes of any kind in, a float32 NCHW batch of the good rows out, errors per row."""

from __future__ import annotations

import io

import numpy as np
import pytest
from image_cases import (
    cmyk_jpeg,
    encode,
    jpeg_with_orientation,
    oriented_pattern,
    palette_with_transparency,
    sixteen_bit_png,
    smooth,
)
from PIL import Image

from sparkvision.config import DecodeSettings, PreprocessConfig
from sparkvision.io.errors import error_kind
from sparkvision.preprocess import ImagePreprocessor


@pytest.fixture(scope="module")
def photos(imagenette) -> list[bytes]:
    files = sorted((imagenette / "train").glob("*/*.JPEG"))[::80]
    assert len(files) == 10
    return [f.read_bytes() for f in files]


def unit(size=(32, 48), channels=3, **kw) -> PreprocessConfig:
    return PreprocessConfig.preset("unit", size=size, channels=channels, **kw)


def test_batch_keeps_good_rows_in_order_and_reports_bad_ones():
    good_a = encode(Image.new("RGB", (10, 10), (255, 0, 0)), "PNG")
    good_b = encode(Image.new("L", (7, 3), 51), "PNG")
    batch = ImagePreprocessor(unit(size=(4, 6)))([good_a, b"", None, b"not an image", good_b, b"\x89PNG\r\n\x1a\n"])
    assert batch.size == 6
    assert batch.index.tolist() == [0, 4]
    assert [error_kind(e) for e in batch.errors] == [None, "empty_file", "unreadable", "not_an_image", None,
                                                      "truncated"]
    tensor = batch.tensor
    assert tensor.shape == (2, 3, 4, 6) and tensor.dtype == np.float32 and tensor.flags.c_contiguous
    assert (tensor[0, 0] == 1.0).all() and (tensor[0, 1:] == 0.0).all()
    np.testing.assert_allclose(tensor[1], 0.2, atol=1e-7)  # 51/255, grey replicated


def test_empty_batch_has_the_right_shape():
    batch = ImagePreprocessor(unit(size=(8, 8)))([])
    assert batch.tensor.shape == (0, 3, 8, 8) and batch.index.shape == (0,) and batch.errors == []


def test_hard_modes_arrive_as_model_pixels():
    pre = ImagePreprocessor(unit(size=(2, 4), channels=1, interpolation="nearest"))
    data, values = sixteen_bit_png()
    assert pre.load(data)[:, :, 0].tolist() == np.rint(values / 257).astype(int).tolist()
    rgb = ImagePreprocessor(unit(size=(4, 8), interpolation="nearest"))
    assert (rgb.load(cmyk_jpeg()).astype(int) - [255, 0, 0]).__abs__().max() <= 3
    palette = rgb.load(palette_with_transparency())
    assert palette[:, :4].tolist() == [[[255, 255, 255]] * 4] * 4  # transparent: white
    assert palette[:, 4:].tolist() == [[[255, 0, 0]] * 4] * 4


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_draft_decoding_respects_exif_orientation(orientation):
    # 48 x 32 displayed, 12 x 8 target: the JPEG decodes at 1/4 scale before rotation.
    pre = ImagePreprocessor(unit(size=(8, 12)))
    out = pre.load(jpeg_with_orientation(orientation)).astype(int)
    expected = oriented_pattern()[::4, ::4].astype(int)  # 16 px blocks become 4 px blocks
    assert np.abs(out - expected).mean() < 4
    blocks = out.reshape(2, 4, 3, 4, 3)[:, 1:3, :, 1:3].mean(axis=(1, 3))  # block centres
    assert np.abs(blocks - oriented_pattern()[8::16, 8::16]).max() < 12


def test_draft_is_exact_when_it_cannot_shrink_and_close_when_it_does(photos):
    exact = PreprocessConfig(size=(224, 224))  # imagenette photos are < 2 x 224 on a side
    full = DecodeSettings(jpeg_draft=False)
    assert np.array_equal(ImagePreprocessor(exact).load_uint8(photos)[0],
                          ImagePreprocessor(exact, full).load_uint8(photos)[0])
    small_jpeg = encode(Image.fromarray(smooth(60, 80)), "JPEG")
    assert np.array_equal(ImagePreprocessor(unit(size=(32, 48))).load(small_jpeg),
                          ImagePreprocessor(unit(size=(32, 48)), full).load(small_jpeg))
    for channels in (3, 1):
        config = unit(size=(64, 64), channels=channels)
        drafted = ImagePreprocessor(config).load_uint8(photos)[0].astype(int)
        decoded = ImagePreprocessor(config, full).load_uint8(photos)[0].astype(int)
        assert np.abs(drafted - decoded).mean() < 1.5  # of 255


def test_real_photos_through_every_resize_mode(photos):
    for mode in ("resize", "center_crop", "letterbox"):
        config = PreprocessConfig.preset("imagenet", size=(96, 128), resize_mode=mode)
        batch = ImagePreprocessor(config)(photos)
        assert batch.tensor.shape == (10, 3, 96, 128)
        assert batch.errors == [None] * 10
        assert np.isfinite(batch.tensor).all()
        # ImageNet normalisation of real photos: roughly zero-mean, unit-scale per channel.
        assert -1.2 < float(batch.tensor.mean()) < 1.2 and 0.4 < float(batch.tensor.std()) < 1.6


def test_load_matches_a_hand_written_decode_for_a_plain_photo(photos):
    config = PreprocessConfig(size=(224, 224))
    img = Image.open(io.BytesIO(photos[0])).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR,
                                                                   reducing_gap=3.0)
    assert np.array_equal(ImagePreprocessor(config).load(photos[0]), np.asarray(img))
    tensor = ImagePreprocessor(config)([photos[0]]).tensor[0]
    np.testing.assert_allclose(tensor, (np.asarray(img).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5, atol=1e-6)
