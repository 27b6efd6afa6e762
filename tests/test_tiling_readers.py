"""Region readers: every format's regions equal the crop of its full decode, read as little as it can."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from sparkvision.config import TilingSettings
from sparkvision.io.errors import ImageError
from sparkvision.tiling.pixels import box_reduce, pil_to_tile
from sparkvision.tiling.readers import DicomScene, PillowScene, PngStreamScene, TiffScene, open_scene
from sparkvision.tiling.tiler import iter_tiles

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (300, 500, 3), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (300, 500), dtype=np.uint16)
REGIONS = [(0, 0, 500, 300), (17, 33, 100, 64), (400, 250, 100, 50), (63, 63, 2, 2)]


def _tiff(data: np.ndarray, **kwargs) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, data, **kwargs)
    return out.getvalue()


def _png(img: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", **kwargs)
    return out.getvalue()


def _assert_regions(data: bytes, reference: np.ndarray, level: int = 0, settings: TilingSettings | None = None):
    with open_scene("memory", data, settings or TilingSettings()) as scene:
        f = 2**level
        for x, y, w, h in REGIONS:
            got = scene.read(0, x, y, w, h, level)
            want = box_reduce(reference, f)[y // f:-(-(y + h) // f), x // f:-(-(x + w) // f)]
            assert got.dtype == want.dtype and np.array_equal(got, want), (x, y, level)
        return scene


@pytest.mark.parametrize("compression", [None, "zlib", "lzw", "packbits"])
@pytest.mark.parametrize("layout", [{"tile": (64, 64)}, {"rowsperstrip": 7}])
@pytest.mark.parametrize("level", [0, 1])
def test_tiff_regions_equal_the_crop(compression, layout, level):
    data = _tiff(RGB, compression=compression, photometric="rgb", **layout)
    scene = _assert_regions(data, RGB, level)
    assert isinstance(scene, TiffScene) and scene.pages[0].mode == "RGB"


def test_tiled_tiff_decodes_only_the_tiles_a_region_touches():
    data = _tiff(RGB, compression="zlib", photometric="rgb", tile=(64, 64))
    with open_scene("memory", data) as scene:
        scene.read(0, 70, 70, 50, 50)  # inside TIFF tile (1, 1) only
        assert set(scene._cache) == {(0, 1 * 8 + 1)}
        scene.read(0, 100, 100, 60, 60)  # tiles (1..2, 1..2)
        assert {k[1] for k in scene._cache} == {9, 10, 17, 18}


def test_tiff_planar_jpeg_and_sixteen_bit():
    planar = _tiff(np.ascontiguousarray(RGB.transpose(2, 0, 1)), photometric="rgb", planarconfig="separate",
                   tile=(64, 64), compression="zlib")
    _assert_regions(planar, RGB)
    jpeg = _tiff(RGB, photometric="rgb", tile=(64, 64), compression="jpeg")
    _assert_regions(jpeg, tifffile.imread(io.BytesIO(jpeg)))  # lossy: compare with tifffile's decode
    grey = _tiff(GREY16, tile=(32, 48), compression="zlib")
    scene = _assert_regions(grey, GREY16)
    assert scene.pages[0].mode == "I;16"  # 16-bit grey stays 16-bit
    windowed = open_scene("memory", grey, TilingSettings(window=(32768, 65536)))
    out = windowed.read(0, 0, 0, 500, 300)
    assert out.dtype == np.uint8 and windowed.pages[0].mode == "L"
    assert abs(int(out[0, 0]) - round(GREY16[0, 0] / 257)) <= 1


def test_multi_page_tiff_pages_are_images_and_overviews_are_skipped():
    out = io.BytesIO()
    with tifffile.TiffWriter(out) as tif:
        tif.write(RGB, photometric="rgb", tile=(64, 64), compression="zlib")
        tif.write(RGB[::2, ::2], photometric="rgb", subfiletype=1)  # a reduced-resolution overview
        tif.write(GREY16[:100, :120], compression="zlib")
    with open_scene("memory", out.getvalue()) as scene:
        assert [(p.width, p.height, p.mode) for p in scene.pages] == [(500, 300, "RGB"), (120, 100, "I;16")]
        assert np.array_equal(scene.read(1, 10, 10, 20, 20), GREY16[10:30, 10:30])


def test_geotiff_tags_are_kept_as_stored():
    tags = [
        (33550, "d", 3, (0.5, 0.5, 0.0), True),  # ModelPixelScaleTag
        (33922, "d", 6, (0, 0, 0, 350807.4, 5316081.3, 0), True),  # ModelTiepointTag
        (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), True),
        (34737, "s", 0, "WGS 84 / UTM zone 33N|", True),
    ]
    data = _tiff(RGB, photometric="rgb", tile=(64, 64), extratags=tags)
    rows = list(iter_tiles("memory", data, settings=TilingSettings(size=256)))
    import json

    geo = json.loads(rows[0]["metadata"])["geotiff"]
    assert geo["ModelPixelScaleTag"] == [0.5, 0.5, 0.0]
    assert geo["ModelTiepointTag"][3:5] == [350807.4, 5316081.3]
    assert geo["GeoKeyDirectoryTag"][-1] == 32633
    assert geo["GeoAsciiParamsTag"] == "WGS 84 / UTM zone 33N|"


def _png_cases():
    palette = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=50)
    palette.info["transparency"] = 3
    four_bit = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    alpha = RNG.integers(0, 256, (300, 500), dtype=np.uint8)
    return {
        "RGB": Image.fromarray(RGB), "L": Image.fromarray(RGB).convert("L"),
        "RGBA": Image.fromarray(np.dstack([RGB, alpha])), "LA": Image.fromarray(np.dstack([RGB[..., 0], alpha])),
        "P+tRNS": palette, "P 4-bit": four_bit, "I;16": Image.fromarray(GREY16), "1": Image.fromarray(RGB).convert("1"),
    }


@pytest.mark.parametrize("name", list(_png_cases()))
def test_png_streams_rows_and_equals_pillows_whole_decode(name):
    img = _png_cases()[name]
    data = _png(img, bits=4) if name == "P 4-bit" else _png(img)
    reference, mode = pil_to_tile(Image.open(io.BytesIO(data)))
    scene = _assert_regions(data, reference)
    assert isinstance(scene, PngStreamScene) and scene.pages[0].mode == mode
    _assert_regions(data, reference, level=2)


def test_png_stream_keeps_only_a_band_in_memory():
    data = _png(Image.fromarray(RGB))
    with open_scene("memory", data) as scene:
        for y in range(0, 300 - 40, 30):  # raster order, like tile rows
            assert np.array_equal(scene.read(0, 0, y, 500, 40), RGB[y:y + 40])
            assert len(scene._band) <= 40 + 64  # the region plus one read-ahead chunk
        assert scene.restarts == 0


def _png16_rgb(values: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    from sparkvision.tiling.png_stream import SIGNATURE, _chunk

    height, width, _ = values.shape
    rows = b"".join(b"\0" + values[r].astype(">u2").tobytes() for r in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def test_png_with_more_than_four_bytes_per_pixel_is_decoded_whole():
    data = _png16_rgb(RGB.astype(np.uint16) * 257)
    reference, _ = pil_to_tile(Image.open(io.BytesIO(data)))
    scene = _assert_regions(data, reference)
    assert isinstance(scene, PillowScene)  # 6 bytes per pixel cannot be relabelled: no streaming
    assert np.array_equal(reference, RGB)


def test_jpeg_levels_decode_at_reduced_dct_scale():
    yy, xx = np.mgrid[0:300, 0:500]
    smooth = np.stack([128 + 100 * np.sin(xx / 23.0), 128 + 100 * np.cos(yy / 31.0), (xx + yy) % 256], -1)
    out = io.BytesIO()
    Image.fromarray(smooth.astype(np.uint8)).save(out, "JPEG", quality=95)
    data = out.getvalue()
    full, _ = pil_to_tile(Image.open(io.BytesIO(data)))
    scene = _assert_regions(data, full)  # level 0 equals the whole decode
    assert isinstance(scene, PillowScene)
    with open_scene("memory", data) as scene:
        half = scene.read(0, 0, 0, 500, 300, 1)
    assert half.shape == (150, 250, 3)
    assert np.abs(half.astype(int) - box_reduce(full, 2).astype(int)).mean() < 2  # DCT scaling ~ box average


def test_whole_decodes_above_the_memory_limit_are_refused_and_the_pixel_limit_holds():
    out = io.BytesIO()
    Image.fromarray(RGB).save(out, "JPEG")
    small = TilingSettings(max_decode_bytes=100_000)
    with open_scene("memory", out.getvalue(), small) as scene, pytest.raises(ImageError, match="max_decode_bytes"):
        scene.read(0, 0, 0, 10, 10)
    with open_scene("memory", out.getvalue(), small) as scene:
        assert scene.read(0, 0, 0, 16, 16, level=2).shape == (4, 4, 3)  # 1/4 scale fits
    with open_scene("memory", _tiff(RGB, photometric="rgb"), TilingSettings(max_pixels=1000)) as scene:
        assert scene.pages[0].error.startswith("too_many_pixels")


def _dicom(frames: np.ndarray, photometric: str = "MONOCHROME2", window: tuple[float, float] | None = (40, 400)):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("ct.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns = frames.shape[1:]
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = frames.astype(np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_dicom_ct_is_windowed_from_the_file_or_the_parameter():
    from sparkvision.tiling.pixels import window_to_uint8

    stored = RNG.integers(0, 4096, (2, 64, 80)).astype(np.uint16)
    data = _dicom(stored)
    with open_scene("ct.dcm", data) as scene:
        assert isinstance(scene, DicomScene) and len(scene.pages) == 2  # frames are pages
        got = scene.read(1, 5, 6, 30, 20)
        hu = stored[1, 6:26, 5:35].astype(np.float64) - 1024
        assert np.array_equal(got, window_to_uint8(hu, 40, 400))
        assert scene.pages[0].metadata["window_source"] == "file"
    with open_scene("ct.dcm", data, TilingSettings(window=(400, 1800))) as scene:
        assert np.array_equal(scene.read(0, 0, 0, 80, 64), window_to_uint8(stored[0] - 1024.0, 400, 1800))
    inverted = _dicom(stored[:1], photometric="MONOCHROME1")
    with open_scene("ct.dcm", inverted) as scene:
        assert np.array_equal(scene.read(0, 0, 0, 80, 64), 255 - window_to_uint8(stored[0] - 1024.0, 40, 400))


def test_unreadable_inputs_raise_a_row_error():
    for data, kind in [(b"", "empty_file"), (b"not an image at all", "not_an_image"), (b"II*\0garbage", "corrupt")]:
        with pytest.raises(ImageError) as exc:
            open_scene("x", data)
        assert exc.value.kind.value == kind
    with pytest.raises(ImageError, match="unreadable"):
        open_scene("/nonexistent/file.tif")
