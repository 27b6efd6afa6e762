"""Opening untrusted bytes: every bad input gets its error kind, good ones their true size and mode."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import warnings

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


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_own_pixel_limit_applies_whatever_pillows_global_says(monkeypatch, fmt):
    buffer = io.BytesIO()
    Image.fromarray(np.arange(48 * 32 * 3, dtype=np.uint8).reshape(32, 48, 3)).save(buffer, format=fmt)
    data = buffer.getvalue()  # 48 x 32 = 1536 pixels
    expected = np.asarray(decode_image(data).convert("RGB"))
    # The application's own, stricter Pillow guard: 1536 > 2 x 500 makes Image.open refuse,
    # 1536 > 1000 makes it warn. Neither may decide for sparkvision, nor be changed by it.
    for application_limit in (500, 1000):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", application_limit)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no DecompressionBombWarning escapes either
            img = decode_image(data, DecodeSettings(max_pixels=2000))
            assert probe_image(data, DecodeSettings(max_pixels=2000)).width == 48
        assert np.array_equal(np.asarray(img.convert("RGB")), expected)
        with pytest.raises(ImageError) as err:
            decode_image(data, DecodeSettings(max_pixels=1000))
        assert err.value.kind == ErrorKind.TOO_MANY_PIXELS and "1,536" in err.value.detail
        assert Image.MAX_IMAGE_PIXELS == application_limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))  # Pillow's guard still works for everyone else


def test_importing_sparkvision_leaves_pillows_globals_alone():
    script = textwrap.dedent(
        """
        import pkgutil, importlib
        from PIL import Image, ImageFile
        Image.MAX_IMAGE_PIXELS = 12345
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        import sparkvision
        names = [m.name for m in pkgutil.walk_packages(sparkvision.__path__, "sparkvision.")]
        for name in names:
            importlib.import_module(name)
        assert "sparkvision.io.decode" in names and "sparkvision.tiling.readers" in names, names
        assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == (12345, True), (
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
        print("imported", len(names))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imported" in result.stdout


def test_missing_content_and_signatures():
    with pytest.raises(ImageError) as err:
        probe_image(None)
    assert err.value.kind == ErrorKind.UNREADABLE
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "PNG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"hello") is None
    assert error_kind("truncated: the data ends") == "truncated" and error_kind(None) is None
