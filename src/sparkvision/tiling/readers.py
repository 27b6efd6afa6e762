"""Region readers: the pixels of a rectangle of a huge image, reading as little as the format allows.

==========================  ===============================================================
format                      how a region is read
==========================  ===============================================================
TIFF, tiled                 only the TIFF tiles the region touches (tifffile + imagecodecs
                            decode each; an LRU cache keeps neighbours for overlapping tiles)
TIFF, striped               only the strips the region touches; uncompressed strips read just
                            the region's bytes. A single-strip compressed page decodes whole.
TIFF, multi-page            every page is an image (``page`` column); reduced-resolution
                            pages (pyramid overviews) are skipped, levels are computed instead
PNG (not interlaced)        rows streamed band by band (:mod:`.png_stream`); forward only
DICOM                       one frame at a time via pydicom (frames are pages), modality LUT
                            then the window (parameter, else the file's, else the frame range)
JPEG                        decoded whole; pyramid levels >= 1 decode at 1/2, 1/4, 1/8 scale
                            (libjpeg DCT scaling), so a level-3 pass needs 1/64 of the memory
other (WebP, BMP, GIF...)   decoded whole (first frame)
==========================  ===============================================================

Whole decodes are refused above ``TilingSettings.max_decode_bytes``, and every page above
``TilingSettings.max_pixels`` (the tiling decompression-bomb guard, higher than ingestion's).
"""

from __future__ import annotations

import io
import json
import logging
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from sparkvision import storage
from sparkvision.config import DecodeSettings, TilingSettings
from sparkvision.io.decode import decode_image, probe_image
from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.tiling.pixels import (
    box_reduce,
    grey_to_tile,
    la_to_tile,
    pil_to_tile,
    rgba_to_tile,
    window_to_uint8,
)
from sparkvision.tiling.png_stream import SIGNATURE as PNG_SIGNATURE
from sparkvision.tiling.png_stream import PngRowStream

log = logging.getLogger(__name__)

#: GeoTIFF and GDAL tags copied into a page's metadata as they are stored.
GEOTIFF_TAGS = {33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113}
#: File extensions tiling lists in folders (ingestion's plus DICOM and whole-slide TIFF).
TILE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm",
    ".dcm", ".dicom", ".svs", ".ndpi",
)


@dataclass
class PageInfo:
    """One image of a source (a TIFF page, a DICOM frame, or the only image)."""

    width: int
    height: int
    mode: str  # mode of the arrays read() returns: L, RGB or I;16
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the page cannot be tiled (too many pixels, unsupported type)

    @property
    def metadata_json(self) -> str:
        return json.dumps(self.metadata, sort_keys=True, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "name") and hasattr(value, "value"):  # enums
        return value.name
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class SceneReader:
    """Pixels of regions of a source's pages, at full resolution or a pyramid level."""

    format = ""
    #: Only forward reads (in raster order of tile rows) are cheap.
    sequential = False

    def __init__(self, settings: TilingSettings, decode: DecodeSettings | None = None) -> None:
        self.settings = settings
        self.decode = decode or DecodeSettings()
        self.pages: list[PageInfo] = []

    def read(self, page: int, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
        """Full-resolution region ``(x, y, w, h)`` box-reduced by ``2**level``.

        Returns the pixels of level ``L`` (``f = 2**L``) from ``x // f`` to ``ceil((x + w) / f)``
        (and likewise in y): the crop of the whole level, since the region is first widened
        to whole ``f x f`` blocks. Tiles start on block boundaries, so theirs are exact.
        """
        info = self.pages[page]
        if info.error:
            raise ImageError(ErrorKind.UNSUPPORTED, info.error)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > info.width or y + h > info.height:
            raise ValueError(f"region {(x, y, w, h)} is not inside the {info.width}x{info.height} image")
        factor = 2**level
        x0, y0 = x // factor * factor, y // factor * factor
        x1, y1 = min(-(-(x + w) // factor) * factor, info.width), min(-(-(y + h) // factor) * factor, info.height)
        return box_reduce(self.read_full(page, x0, y0, x1 - x0, y1 - y0), factor)

    def read_full(self, page: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_pixels(width: int, height: int, settings: TilingSettings) -> str | None:
    if width <= 0 or height <= 0:
        return f"{ErrorKind.CORRUPT.value}: invalid dimensions {width}x{height}"
    if width * height > settings.max_pixels:
        return ImageError(
            ErrorKind.TOO_MANY_PIXELS,
            f"{width}x{height} = {width * height:,} pixels exceeds the tiling limit of {settings.max_pixels:,}",
        ).message
    return None


# --------------------------------------------------------------------------- TIFF


class TiffScene(SceneReader):
    format = "TIFF"

    def __init__(self, fh: BinaryIO, settings: TilingSettings, decode: DecodeSettings | None = None) -> None:
        super().__init__(settings, decode)
        import tifffile

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._tif = tifffile.TiffFile(fh)
                self._pages = [p for p in self._tif.pages if not getattr(p, "is_reduced", False)]
        except Exception as exc:  # noqa: BLE001 - any parse failure is this row's error
            raise ImageError(ErrorKind.CORRUPT, f"TIFF structure cannot be parsed ({exc})") from None
        if not self._pages:
            raise ImageError(ErrorKind.CORRUPT, "TIFF has no image pages")
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cache_bytes = 0
        self.pages = [self._describe(i, p) for i, p in enumerate(self._pages)]

    def _describe(self, index: int, page: Any) -> PageInfo:
        width, height = int(page.imagewidth), int(page.imagelength)
        photometric = int(page.photometric)
        dtype = np.dtype(page.dtype) if page.dtype is not None else None
        meta: dict[str, Any] = {
            "format": "TIFF", "page": index, "pages": len(self._pages), "tiled": bool(page.is_tiled),
            "tile": [int(page.tilewidth), int(page.tilelength)] if page.is_tiled else None,
            "rows_per_strip": None if page.is_tiled else int(page.rowsperstrip or height),
            "compression": _enum_name(page.compression), "photometric": _enum_name(page.photometric),
            "dtype": str(dtype), "samples": int(page.samplesperpixel),
        }
        geo = {tag.name: _jsonable(tag.value) for tag in page.tags.values() if tag.code in GEOTIFF_TAGS}
        if geo:
            meta["geotiff"] = geo
        error = _check_pixels(width, height, self.settings)
        mode = "RGB"
        if error is None:
            if dtype is None:
                error = f"{ErrorKind.UNSUPPORTED.value}: TIFF sample format {page.sampleformat}/{page.bitspersample}-bit"
            elif int(page.imagedepth) != 1:
                error = f"{ErrorKind.UNSUPPORTED.value}: volumetric TIFF (image depth {page.imagedepth})"
            elif photometric in (0, 1):
                mode = self._grey_mode(dtype)
                if np.issubdtype(dtype, np.floating) and self.settings.window is None:
                    error = f"{ErrorKind.UNSUPPORTED.value}: {dtype} grey values have no fixed range; pass a window"
            elif photometric == 6 and int(page.compression) not in (6, 7, 34892):
                error = f"{ErrorKind.UNSUPPORTED.value}: YCbCr TIFF without JPEG compression"
            elif photometric in (2, 3, 5, 6) and dtype not in (np.uint8, np.uint16):
                error = f"{ErrorKind.UNSUPPORTED.value}: {dtype} colour TIFF"
            elif photometric not in (2, 3, 5, 6):
                error = f"{ErrorKind.UNSUPPORTED.value}: TIFF photometric {_enum_name(page.photometric)}"
        return PageInfo(width, height, mode, meta, error)

    def _grey_mode(self, dtype: np.dtype) -> str:
        if dtype in (np.uint8, np.bool_) or self.settings.window is not None:
            return "L"
        if np.issubdtype(dtype, np.integer):
            return "I;16"
        return "L"  # float: read() reports that a window is needed

    # -- segments

    def _segment(self, page_index: int, index: int) -> np.ndarray | None:
        key = (page_index, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        page = self._pages[page_index]
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        fh = self._tif.filehandle
        data = None
        if offset > 0 and count > 0:
            with fh.lock:
                fh.seek(offset)
                data = fh.read(count)
            if len(data) < count:
                raise ImageError(ErrorKind.TRUNCATED, f"TIFF segment {index} ends early ({len(data)} of {count} bytes)")
        try:
            segment, _, _ = page.decode(
                data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader, _fullsize=bool(page.is_tiled)
            )
        except ImageError:
            raise
        except (ValueError, NotImplementedError) as exc:
            raise ImageError(ErrorKind.UNSUPPORTED, f"TIFF segment {index} cannot be decoded ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - corrupt compressed data in one segment
            raise ImageError(ErrorKind.CORRUPT, f"TIFF segment {index} is corrupt ({type(exc).__name__}: {exc})") from None
        segment = None if segment is None else segment[0]
        size = 0 if segment is None else segment.nbytes
        if size <= self.settings.segment_cache_bytes // 4:
            self._cache[key] = segment
            self._cache_bytes += size
            while self._cache_bytes > self.settings.segment_cache_bytes and self._cache:
                _, dropped = self._cache.popitem(last=False)
                self._cache_bytes -= 0 if dropped is None else dropped.nbytes
        return segment

    def _segment_bytes(self, page: Any) -> int:
        contig = int(page.samplesperpixel) if int(page.planarconfig) == 1 else 1
        rows = int(page.tilelength) if page.is_tiled else int(page.rowsperstrip or page.imagelength)
        cols = int(page.tilewidth) if page.is_tiled else int(page.imagewidth)
        return rows * cols * contig * np.dtype(page.dtype).itemsize

    def _raw(self, page_index: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The stored samples of a region, (h, w, samples), before any photometric conversion.

        Of separate sample planes only those used are decoded (grey + alpha, or colour +
        alpha); the others stay uninitialised.
        """
        page = self._pages[page_index]
        samples = int(page.samplesperpixel)
        separate = int(page.planarconfig) == 2
        used = min(samples, (2 if int(page.photometric) in (0, 1) else 4))
        planes, contig = (used, 1) if separate else (1, samples)
        width, height = int(page.imagewidth), int(page.imagelength)
        out = np.empty((h, w, samples), dtype=page.dtype)
        if self._direct_rows(page):
            return self._read_rows(page, x, y, w, h, out)
        segment_bytes = self._segment_bytes(page)
        if segment_bytes > self.settings.max_decode_bytes:
            raise ImageError(
                ErrorKind.TOO_MANY_PIXELS,
                f"one TIFF segment decodes to {segment_bytes:,} bytes (> max_decode_bytes "
                f"{self.settings.max_decode_bytes:,}); re-save the image as tiled TIFF",
            )
        if page.is_tiled:
            seg_w, seg_h = int(page.tilewidth), int(page.tilelength)
            across, down = math.ceil(width / seg_w), math.ceil(height / seg_h)
        else:
            seg_w, seg_h = width, int(page.rowsperstrip or height)
            across, down = 1, math.ceil(height / seg_h)
        for plane in range(planes):
            for sy in range(y // seg_h, (y + h - 1) // seg_h + 1):
                for sx in range(x // seg_w, (x + w - 1) // seg_w + 1):
                    segment = self._segment(page_index, plane * across * down + sy * across + sx)
                    x0, y0 = sx * seg_w, sy * seg_h
                    ix0, iy0 = max(x, x0), max(y, y0)
                    ix1, iy1 = min(x + w, x0 + seg_w), min(y + h, y0 + seg_h)
                    target = out[iy0 - y:iy1 - y, ix0 - x:ix1 - x, plane:plane + contig]
                    if segment is None:
                        target[...] = page.nodata
                    else:
                        target[...] = segment[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0].reshape(target.shape)
        return out

    @staticmethod
    def _direct_rows(page: Any) -> bool:
        return (
            int(page.compression) == 1 and int(page.predictor) == 1 and int(page.fillorder) == 1
            and int(page.bitspersample) % 8 == 0 and int(page.planarconfig) == 1 and not page.is_tiled
            and not getattr(page, "is_subsampled", False)
        )

    def _read_rows(self, page: Any, x: int, y: int, w: int, h: int, out: np.ndarray) -> np.ndarray:
        """Uncompressed strips: read only the region's bytes, row by row."""
        dtype = np.dtype(page.dtype).newbyteorder(self._tif.byteorder)
        pixel = int(page.samplesperpixel) * dtype.itemsize
        width = int(page.imagewidth)
        rows_per_strip = int(page.rowsperstrip or page.imagelength)
        fh = self._tif.filehandle
        with fh.lock:
            for r in range(y, y + h):
                strip = r // rows_per_strip
                offset = int(page.dataoffsets[strip]) + ((r - strip * rows_per_strip) * width + x) * pixel
                fh.seek(offset)
                data = fh.read(w * pixel)
                if len(data) < w * pixel:
                    raise ImageError(ErrorKind.TRUNCATED, f"TIFF row {r} ends early")
                out[r - y] = np.frombuffer(data, dtype=dtype).reshape(w, -1)
        return out

    # -- conversion

    def read_full(self, page: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        tiff_page = self._pages[page]
        raw = self._raw(page, x, y, w, h)
        photometric = int(tiff_page.photometric)
        extra = tuple(int(e) for e in (tiff_page.extrasamples or ()))
        if photometric in (0, 1):
            grey = raw[..., 0]
            if photometric == 0:  # MinIsWhite
                grey = ~grey if grey.dtype == np.bool_ else _invert(grey, int(tiff_page.bitspersample))
            if grey.dtype == np.uint8 and raw.shape[2] >= 2 and extra[:1] in ((1,), (2,)):
                return la_to_tile(np.stack([grey, raw[..., 1]], axis=-1), self.decode)
            arr, _ = grey_to_tile(grey, self.settings.window)
            return arr
        if photometric == 3:
            colormap = np.rint(np.asarray(tiff_page.colormap, dtype=np.float64) / 257.0).astype(np.uint8)
            return np.ascontiguousarray(colormap.T[raw[..., 0].astype(np.intp)])
        if raw.dtype == np.uint16:
            raw = np.rint(raw / 257.0).astype(np.uint8)
        if photometric == 5:
            from PIL import Image

            return np.asarray(Image.fromarray(np.ascontiguousarray(raw[..., :4]), mode="CMYK").convert("RGB"))
        if raw.shape[2] >= 4 and extra[:1] in ((1,), (2,)):
            if extra[0] == 1:  # associated (premultiplied) alpha
                from PIL import Image

                from sparkvision.preprocess.color import to_model_mode

                img = Image.fromarray(np.ascontiguousarray(raw[..., :4]), mode="RGBa")
                return np.asarray(to_model_mode(img, 3, self.decode.alpha_background))
            return rgba_to_tile(raw[..., :4], self.decode)
        return np.ascontiguousarray(raw[..., :3])

    def close(self) -> None:
        self._cache.clear()
        self._tif.close()


def _invert(values: np.ndarray, bits: int) -> np.ndarray:
    if np.issubdtype(values.dtype, np.unsignedinteger):
        return (np.iinfo(values.dtype).max if bits >= values.dtype.itemsize * 8 else (1 << bits) - 1) - values
    return -values


def _enum_name(value: Any) -> str:
    return getattr(value, "name", str(value))


# --------------------------------------------------------------------------- DICOM


class DicomScene(SceneReader):
    format = "DICOM"

    def __init__(self, fh: BinaryIO, settings: TilingSettings, decode: DecodeSettings | None = None) -> None:
        super().__init__(settings, decode)
        import pydicom

        try:
            self._ds = pydicom.dcmread(fh)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad files
            raise ImageError(ErrorKind.CORRUPT, f"DICOM cannot be parsed ({exc})") from None
        ds = self._ds
        if "PixelData" not in ds:
            raise ImageError(ErrorKind.UNSUPPORTED, "DICOM file has no pixel data")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        width, height = int(ds.Columns), int(ds.Rows)
        self._photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        self._colour = int(ds.get("SamplesPerPixel", 1)) > 1
        self._window, source = self._choose_window()
        meta: dict[str, Any] = {"format": "DICOM", "frames": frames, "window_source": source}
        if self._window is not None:
            meta["window"] = list(self._window)
        for keyword in (
            "Modality", "PhotometricInterpretation", "BitsStored", "PixelRepresentation", "RescaleSlope",
            "RescaleIntercept", "WindowCenter", "WindowWidth", "PixelSpacing", "SliceThickness",
            "ImagePositionPatient", "ImageOrientationPatient", "StudyInstanceUID", "SeriesInstanceUID",
            "SOPInstanceUID",
        ):
            if keyword in ds:
                meta[keyword] = _dicom_value(ds[keyword].value)
        error = _check_pixels(width, height, settings)
        mode = "RGB" if self._colour else "L"
        self.pages = [PageInfo(width, height, mode, {**meta, "frame": i}, error) for i in range(frames)]
        self._frames = frames
        self._cached: tuple[int, np.ndarray] | None = None

    def _choose_window(self) -> tuple[tuple[float, float] | None, str]:
        if self._colour:
            return None, "none (colour)"
        if self.settings.window is not None:
            return (float(self.settings.window[0]), float(self.settings.window[1])), "parameter"
        ds = self._ds
        if "WindowCenter" in ds and "WindowWidth" in ds:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            if width > 0:
                return (center, width), "file"
        return None, "frame range"

    def _frame(self, index: int) -> np.ndarray:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        from pydicom.pixels import apply_modality_lut, pixel_array

        try:
            raw = pixel_array(self._ds, index=index if self._frames > 1 else None)
        except Exception as exc:  # noqa: BLE001 - missing codec plugins, corrupt frames
            raise ImageError(ErrorKind.UNSUPPORTED, f"DICOM frame {index} cannot be decoded ({exc})") from None
        if self._colour:
            arr = raw if raw.dtype == np.uint8 else np.rint(np.clip(raw, 0, 65535) / 257.0).astype(np.uint8)
        else:
            values = apply_modality_lut(raw, self._ds).astype(np.float64)
            window = self._window
            if window is None:
                low, high = float(values.min()), float(values.max())
                window = ((low + high + 1) / 2.0, max(1.0, high - low + 1))
            arr = window_to_uint8(values, *window)
            if self._photometric == "MONOCHROME1":
                arr = 255 - arr
        self._cached = (index, arr)
        return arr

    def read_full(self, page: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return np.ascontiguousarray(self._frame(page)[y:y + h, x:x + w])


def _first(value: Any) -> float:
    try:
        return float(value[0]) if not isinstance(value, str | bytes) and hasattr(value, "__getitem__") else float(value)
    except (TypeError, ValueError, IndexError):
        return float("nan")


def _dicom_value(value: Any) -> Any:
    if isinstance(value, str | int | float) or value is None:
        return value
    if isinstance(value, bytes):
        return None
    if hasattr(value, "__iter__"):
        return [_dicom_value(v) for v in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


# --------------------------------------------------------------------------- PNG streaming


class PngStreamScene(SceneReader):
    format = "PNG"
    sequential = True

    def __init__(self, stream: PngRowStream, fh: BinaryIO, settings: TilingSettings,
                 decode: DecodeSettings | None = None) -> None:
        super().__init__(settings, decode)
        self._stream = stream
        self._fh = fh
        mode = "I;16" if stream.color_type == 0 and stream.depth == 16 and settings.window is None else (
            "L" if stream.color_type in (0, 4) else "RGB"
        )
        meta = {"format": "PNG", "bit_depth": stream.depth, "color_type": stream.color_type, "streamed": True}
        self.pages = [PageInfo(stream.width, stream.height, mode, meta, _check_pixels(stream.width, stream.height, settings))]
        self._band: np.ndarray | None = None  # converted rows [band_start, band_start + len)
        self._band_start = 0
        self.restarts = 0

    def read_full(self, page: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        # Invariant: the band holds converted rows [band_start, stream.next_row).
        if y < self._band_start:
            self.restarts += 1
            log.debug("PNG stream restarts for rows %d+ (requests went backwards)", y)
            self._stream.restart()
            self._band, self._band_start = None, 0
        if self._band is not None:
            drop = min(y - self._band_start, len(self._band))
            self._band = self._band[drop:] if drop < len(self._band) else None
            self._band_start += drop
        if self._band is None:
            while self._stream.next_row < y:  # rows above the region: decoded in chunks, dropped
                self._stream.read_raw(min(256, y - self._stream.next_row))
            self._band_start = self._stream.next_row
        if self._stream.next_row < y + h:
            raw = self._stream.read_raw(max(y + h - self._stream.next_row, 64))
            arr, _ = pil_to_tile(self._stream.to_image(raw), self.settings.window, self.decode)
            self._band = arr if self._band is None else np.concatenate([self._band, arr])
        offset = y - self._band_start
        return np.ascontiguousarray(self._band[offset:offset + h, x:x + w])

    def close(self) -> None:
        self._band = None
        self._fh.close()


# --------------------------------------------------------------------------- whole decodes


class PillowScene(SceneReader):
    """Formats without region access: one decode per pyramid level, JPEG at reduced DCT scale."""

    def __init__(self, data: bytes, settings: TilingSettings, decode: DecodeSettings | None = None) -> None:
        super().__init__(settings, decode)
        self._decode_settings = DecodeSettings(
            max_pixels=settings.max_pixels,
            alpha_background=self.decode.alpha_background,
            jpeg_draft=True,
        )
        info = probe_image(data, self._decode_settings, full=False)
        self.format = info.format or ""
        self._data = data
        self._bytes_per_pixel = 2 if info.mode in ("I;16", "I;16B", "I;16L", "I", "F") else max(info.channels, 1)
        mode = "I;16" if info.mode.startswith("I;16") and settings.window is None else (
            "L" if info.channels == 1 else "RGB"
        )
        meta = {"format": info.format, "mode": info.mode, "streamed": False}
        self.pages = [PageInfo(info.width, info.height, mode, meta, _check_pixels(info.width, info.height, settings))]
        self._level: tuple[int, np.ndarray] | None = None

    def _level_array(self, level: int) -> np.ndarray:
        if self._level is not None and self._level[0] == level:
            return self._level[1]
        self._level = None  # release the previous level before decoding the next
        info = self.pages[0]
        factor = 2**level
        scale = min(factor, 8) if self.format == "JPEG" else 1
        decoded = math.ceil(info.width / scale) * math.ceil(info.height / scale) * max(self._bytes_per_pixel, 3)
        if decoded > self.settings.max_decode_bytes:
            raise ImageError(
                ErrorKind.TOO_MANY_PIXELS,
                f"a {info.width}x{info.height} {self.format} has no region access and would decode whole "
                f"to {decoded / 2**20:,.0f} MiB (> max_decode_bytes {self.settings.max_decode_bytes / 2**20:,.0f} MiB); "
                "tile a coarser pyramid level or convert it to tiled TIFF",
            )

        def draft(width: int, height: int) -> tuple[str, tuple[int, int]]:
            return "", (math.ceil(width / factor), math.ceil(height / factor))

        img = decode_image(self._data, self._decode_settings, draft=draft if scale > 1 else None)
        arr, _ = pil_to_tile(img, self.settings.window, self.decode)
        # JPEG draft decodes at 1/1, 1/2, 1/4 or 1/8 (sizes rounded up); the rest is a box reduction.
        got = next((p for p in (1, 2, 4, 8) if math.ceil(info.width / p) == arr.shape[1]
                    and math.ceil(info.height / p) == arr.shape[0]), None)
        if got is None or factor % got:
            raise ImageError(ErrorKind.CORRUPT, f"decoded size {arr.shape[1]}x{arr.shape[0]} does not match the header")
        arr = box_reduce(arr, factor // got)
        self._level = (level, arr)
        return arr

    def read(self, page: int, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
        info = self.pages[page]
        if info.error:
            raise ImageError(ErrorKind.UNSUPPORTED, info.error)
        factor = 2**level
        arr = self._level_array(level)
        return np.ascontiguousarray(arr[y // factor:math.ceil((y + h) / factor), x // factor:math.ceil((x + w) / factor)])

    def read_full(self, page: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.read(page, x, y, w, h, 0)

    def close(self) -> None:
        self._level = None
        self._data = b""


# --------------------------------------------------------------------------- opening


def open_path(path: str) -> BinaryIO:
    """A seekable binary file for a local path, ``file:`` URI, or any URI pyarrow's filesystems know."""
    try:
        return storage.open_input(path)
    except OSError as exc:
        raise ImageError(ErrorKind.UNREADABLE, f"cannot open {path} ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - remote file: host, unknown scheme, missing filesystem support
        raise ImageError(ErrorKind.UNREADABLE, f"cannot open {path} ({type(exc).__name__}: {exc})") from None


def sniff(head: bytes) -> str:
    """The reader a file needs, from its first 132 bytes."""
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[128:132] == b"DICM":
        return "DICOM"
    if head[:8] == PNG_SIGNATURE:
        return "PNG"
    return "OTHER"


def _read_all(fh: BinaryIO, limit: int, path: str) -> bytes:
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise ImageError(ErrorKind.TOO_LARGE, f"{path} has more than {limit:,} bytes (max_file_bytes)")
    return data


def open_scene(
    path: str,
    content: bytes | None = None,
    settings: TilingSettings | None = None,
    decode: DecodeSettings | None = None,
) -> SceneReader:
    """The right reader for a source: its bytes if given, else the file at ``path``."""
    settings = settings or TilingSettings()
    if content is not None and len(content) == 0:
        raise ImageError(ErrorKind.EMPTY_FILE, "the file has 0 bytes")
    fh: BinaryIO = io.BytesIO(content) if content is not None else open_path(path)
    try:
        head = fh.read(132)
        fh.seek(0)
        if not head:
            raise ImageError(ErrorKind.EMPTY_FILE, "the file has 0 bytes")
        kind = sniff(head)
        if kind == "TIFF":
            return TiffScene(fh, settings, decode)
        if kind == "DICOM":
            scene: SceneReader = DicomScene(fh, settings, decode)
            fh.close()
            return scene
        if kind == "PNG":
            stream = PngRowStream(fh)
            if stream.streamable:
                return PngStreamScene(stream, fh, settings, decode)
            fh.seek(0)
        data = content if content is not None else _read_all(fh, settings.max_file_bytes, path)
        fh.close()
        return PillowScene(data, settings, decode)
    except BaseException:
        fh.close()
        raise


def thumbnail(scene: SceneReader, page: int, max_side: int, band_bytes: int = 64 * 1024 * 1024) -> np.ndarray:
    """A downscaled copy of a page (longest side <= ``max_side``), read in bands.

    The coarsest pyramid level not smaller than ``max_side`` is read band by band, so
    memory stays near ``band_bytes`` whatever the page's size; the caller resizes further.
    """
    info = scene.pages[page]
    level = 0
    while max(info.width, info.height) / 2 ** (level + 1) >= max_side:
        level += 1
    factor = 2**level
    bytes_per_level_row = info.width * 3 * factor
    rows = max(1, band_bytes // max(1, bytes_per_level_row)) * factor
    bands = [
        scene.read(page, 0, y, info.width, min(rows, info.height - y), level) for y in range(0, info.height, rows)
    ]
    return np.concatenate(bands) if len(bands) > 1 else bands[0]
