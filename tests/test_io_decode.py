"""Opening untrusted bytes: every bad input gets its error kind, good ones their true size and mode."""

from __future__ import annotations

import os

import numpy as np
import pytest
from image_cases import (
    animated_gif,
    build_messy_folder,
    jpeg_with_orientation,
    oriented_pattern,
    palette_with_transparency,
    sixteen_bit_png,
)
from PIL import Image

from sparkvision.config import DecodeSettings
from sparkvision.io.decode import decode_image, probe_image, sniff_format
from sparkvision.io.errors import ErrorKind, ImageError, error_kind


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    return root, build_messy_folder(root)


def _read(root, case) -> bytes:
    with open(os.path.join(os.fsencode(root), case.rel), "rb") as handle:
        return handle.read()


def test_every_readable_case_probes_to_its_expected_kind_and_metadata(messy):
    root, cases = messy
    checked = 0
    for case in cases:
        if case.kind == "unreadable":
            continue  # no bytes to give the decoder; covered by the source tests
        data = _read(root, case)
        for full in (True, False):
            if not full and case.kind in ("truncated", "corrupt"):
                continue  # only a full decode finds damage after the header
            try:
                info = probe_image(data, full=full)
            except ImageError as exc:
                assert exc.kind == case.kind, (case.rel, full, exc.message)
                assert exc.message.startswith(f"{case.kind}: ") and len(exc.detail) > 5
                continue
            assert case.kind is None, (case.rel, full, "decoded but should fail")
            assert (info.format, info.mode, info.width, info.height, info.channels) == (
                case.format, case.mode, case.width, case.height, case.channels,
            ), case.rel
        checked += 1
    assert checked >= 35


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_displayed_pixels(orientation):
    data = jpeg_with_orientation(orientation)
    expected = oriented_pattern().astype(np.int16)
    img = decode_image(data)
    assert img.size == (48, 32)
    pixels = np.asarray(img.convert("RGB"), dtype=np.int16)
    # JPEG is lossy: mean error tiny, and every 16 px block keeps its own colour.
    assert np.abs(pixels - expected).mean() < 3
    blocks = pixels.reshape(2, 16, 3, 16, 3).mean(axis=(1, 3))
    assert np.abs(blocks - expected[::16, ::16]).max() < 8
    info = probe_image(data)
    assert (info.width, info.height) == (48, 32)
    assert probe_image(data, full=False).width == 48


def test_exif_orientation_is_honoured_on_png_too():
    from image_cases import encode, stored_for_orientation

    stored = Image.fromarray(stored_for_orientation(oriented_pattern(), 6))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "PNG", exif=exif.tobytes())
    assert np.array_equal(np.asarray(decode_image(data)), oriented_pattern())
    assert (probe_image(data).width, probe_image(data).height) == (48, 32)


def test_animated_gif_decodes_its_first_frame():
    data, first = animated_gif()
    img = decode_image(data)
    assert img.size == (20, 10)
    assert np.asarray(img.convert("RGB"))[5, 10].tolist() == list(first)


def test_sixteen_bit_png_keeps_its_full_depth_until_conversion():
    data, values = sixteen_bit_png()
    img = decode_image(data)
    assert img.mode == "I;16"
    assert np.array_equal(np.asarray(img), values)


def test_palette_transparency_survives_decoding():
    img = decode_image(palette_with_transparency())
    assert img.mode == "P" and img.info.get("transparency") == 0


def test_pixel_limit_is_configurable():
    data = jpeg_with_orientation(1)  # 48 x 32 = 1536 pixels
    with pytest.raises(ImageError) as err:
        probe_image(data, DecodeSettings(max_pixels=1000))
    assert err.value.kind == ErrorKind.TOO_MANY_PIXELS and "1,536" in err.value.detail
    assert probe_image(data, DecodeSettings(max_pixels=1536)).width == 48
    with pytest.raises(ImageError):
        decode_image(data, DecodeSettings(max_pixels=1000))


def test_missing_content_and_signatures():
    with pytest.raises(ImageError) as err:
        probe_image(None)
    assert err.value.kind == ErrorKind.UNREADABLE
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "PNG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"hello") is None
    assert error_kind("truncated: the data ends") == "truncated" and error_kind(None) is None
