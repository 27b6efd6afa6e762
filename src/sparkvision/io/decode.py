"""Opening untrusted image bytes: the only place sparkvision calls ``Image.open``.

Every failure becomes an :class:`ImageError` of a known kind, so callers record it
on the row and go on. The decompression-bomb guard is sparkvision's own, with a
limit per call (ingestion's default, tiling's higher one), checked from the header
before any pixel is decoded. Pillow's process-wide settings (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``) belong to the application and are never changed:
where Pillow's guard would refuse an image that sparkvision's limit allows, the image
is opened through its format plugin directly (:func:`pillow_open`).
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from sparkvision.config import DecodeSettings
from sparkvision.io.errors import ErrorKind, ImageError

#: EXIF orientations that swap width and height.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION_TAG = 0x0112
_ORIENTATION_OPS = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


@dataclass(frozen=True)
class ImageInfo:
    """What ingestion records about a decodable image (size as displayed, after EXIF)."""

    format: str | None
    mode: str
    width: int
    height: int
    channels: int


def colour_channels(img: Image.Image) -> int:
    """Channels of colour information: palette images count as RGB or RGBA."""
    if img.mode == "P":
        return 4 if "transparency" in img.info else 3
    if img.mode == "PA":
        return 4
    return len(img.getbands())


def exif_orientation(img: Image.Image) -> int:
    """EXIF orientation 1-8; a broken EXIF block counts as 'no rotation' (the pixels are fine).

    Call it on a loaded image, or on a JPEG: Pillow's PNG plugin decodes the whole
    image to look for an eXIf chunk after the pixels, and a decode error there must
    not be mistaken for a broken EXIF block (see :func:`_header_orientation`).
    """
    try:
        value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        value = int(value)
    except Exception:  # noqa: BLE001 - malformed EXIF must not cost a good image
        return 1
    return value if 1 <= value <= 8 else 1


#: File signatures of the formats ingestion reads, to tell a broken image from a non-image.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def sniff_format(data: bytes) -> str | None:
    """The format a file's signature claims, whether or not the rest is valid."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


_JPEG_FRAME_HEADER = re.compile(rb"\xff[\xc0-\xc3\xc5-\xc7\xc9-\xcb\xcd-\xcf]")


def _header_cut(data: bytes, claimed: str) -> bool:
    """Whether the bytes stop before the header that gives the image's size."""
    if claimed == "PNG":  # walk the chunks: does the data reach the first IDAT?
        pos = 8
        while pos + 8 <= len(data):
            if data[pos + 4: pos + 8] == b"IDAT":
                return False
            pos += 12 + int.from_bytes(data[pos: pos + 4], "big")
        return True
    if claimed == "JPEG":
        return _JPEG_FRAME_HEADER.search(data) is None  # no start-of-frame marker
    return len(data) < 64


def pillow_open(data: bytes) -> Image.Image:
    """``Image.open`` of in-memory bytes (header only), leaving the pixel limit to the caller.

    Pillow's ``DecompressionBombWarning`` is silenced for this call, and when its global
    limit refuses the image outright the bytes are opened again through the registered
    format plugins, as ``Image.open`` does but without that check: the caller applies
    its own per-call limit next. Raises what ``Image.open`` raises otherwise.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            return _open_with_plugins(data)


def _open_with_plugins(data: bytes) -> Image.Image:
    prefix = data[:16]
    for load_plugins in (Image.preinit, Image.init):
        load_plugins()
        for name in Image.ID:
            factory, accept = Image.OPEN[name]
            accepted = accept(prefix) if accept is not None else True
            if not accepted or isinstance(accepted, str):
                continue
            try:
                return factory(io.BytesIO(data), "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue  # as Image.open: not this format after all
    raise UnidentifiedImageError("cannot identify image file")


def _open(data: bytes | None) -> Image.Image:
    if data is None:
        raise ImageError(ErrorKind.UNREADABLE, "no content was read for this file")
    if len(data) == 0:
        raise ImageError(ErrorKind.EMPTY_FILE, "the file has 0 bytes")
    try:
        return pillow_open(data)
    except UnidentifiedImageError:
        claimed = sniff_format(data)
        if claimed is not None and _header_cut(data, claimed):
            raise ImageError(
                ErrorKind.TRUNCATED, f"starts like a {claimed} file but ends inside its header ({len(data)} bytes)"
            ) from None
        if claimed is not None:
            raise ImageError(ErrorKind.CORRUPT, f"starts like a {claimed} file but its header cannot be parsed") from None
        raise ImageError(ErrorKind.NOT_AN_IMAGE, f"no image format recognises these {len(data)} bytes") from None
    except Image.DecompressionBombError as exc:  # a plugin's own check while reading the header (GIF frames)
        raise ImageError(ErrorKind.TOO_MANY_PIXELS, str(exc)) from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, zlib.error) as exc:
        if _is_truncation(exc):
            raise ImageError(ErrorKind.TRUNCATED, f"the data ends inside the header ({exc})") from None
        raise ImageError(ErrorKind.CORRUPT, f"header cannot be parsed ({exc})") from None


def _is_truncation(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, EOFError) or "truncated" in text or "premature end" in text


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(ErrorKind.CORRUPT, f"invalid dimensions {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            ErrorKind.TOO_MANY_PIXELS,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}",
        )


def _load(img: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except (OSError, EOFError) as exc:
        if _is_truncation(exc):
            raise ImageError(ErrorKind.TRUNCATED, str(exc) or "the data ends before the image does") from None
        raise ImageError(ErrorKind.CORRUPT, str(exc)) from None
    except (SyntaxError, ValueError, struct.error, zlib.error, IndexError, TypeError) as exc:
        raise ImageError(ErrorKind.CORRUPT, f"{type(exc).__name__}: {exc}") from None
    except MemoryError:
        raise ImageError(ErrorKind.TOO_MANY_PIXELS, "not enough memory to decode this image") from None
    except Image.DecompressionBombError as exc:  # a GIF frame larger than its header said
        raise ImageError(ErrorKind.TOO_MANY_PIXELS, str(exc)) from None


def _header_orientation(img: Image.Image) -> int:
    """Orientation from what opening the file has parsed, without decoding pixels.

    JPEG, WebP and TIFF carry EXIF before the pixels; a PNG's eXIf chunk is only known
    here when it precedes the image data (as Pillow and most tools write it).
    """
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    return exif_orientation(img)


def displayed_size(img: Image.Image, orientation: int) -> tuple[int, int]:
    width, height = img.size
    return (height, width) if orientation in _TRANSPOSED_ORIENTATIONS else (width, height)


class OcvImage(NamedTuple):
    """Pixels another decoder already produced, as Spark's ``image`` source stores them.

    The fields of ``pyspark.ml.image.ImageSchema`` less ``origin``: ``data`` is the
    row-major bytes in OpenCV's channel order (BGR, BGRA or grey) and ``mode`` an
    OpenCV type code (:data:`OCV_MODES`). :func:`decode_image` takes one wherever it
    takes encoded bytes, so such pixels go through the same preprocessing.
    """

    height: int
    width: int
    n_channels: int
    mode: int
    data: bytes


#: The 8-bit OpenCV types Spark's image source writes (``ImageSchema.ocvTypes``):
#: type code -> (channels, its name). They become Pillow's ``L``, ``RGB`` and ``RGBA``.
OCV_MODES = {0: (1, "CV_8UC1"), 16: (3, "CV_8UC3"), 24: (4, "CV_8UC4")}
#: ``ImageSchema.undefinedImageType``: what Spark writes for a file its decoder refused.
OCV_UNDEFINED = -1


def ocv_to_image(
    height: int, width: int, n_channels: int, mode: int, data: bytes | None, settings: DecodeSettings | None = None
) -> Image.Image:
    """An :class:`OcvImage`'s fields as a Pillow image: grey as ``L``, BGR as ``RGB``, BGRA as ``RGBA``.

    BGRA keeps its alpha (Spark's source stores it unpremultiplied), so the mode rules of
    :mod:`sparkvision.preprocess.color` composite it exactly as they do a decoded RGBA
    file. Raises :class:`ImageError`: ``corrupt`` for a row Spark's decoder refused
    (``mode`` -1) or whose sizes and data disagree, ``truncated`` for data shorter
    than ``height * width * nChannels``, ``unsupported`` for a type other than 8-bit
    1, 3 or 4 channels.
    """
    settings = settings or DecodeSettings()
    fields = {"height": height, "width": width, "nChannels": n_channels, "mode": mode}
    missing = [name for name, value in fields.items() if value is None]
    if missing:
        raise ImageError(ErrorKind.CORRUPT, f"the image row has no {', '.join(missing)}")
    if mode == OCV_UNDEFINED:
        raise ImageError(ErrorKind.CORRUPT, "Spark's image source could not decode this file (mode -1, undefined)")
    if mode not in OCV_MODES:
        known = ", ".join(f"{code} ({name})" for code, (_, name) in OCV_MODES.items())
        raise ImageError(ErrorKind.UNSUPPORTED, f"OpenCV type {mode} is not one sparkvision reads; expected {known}")
    channels, name = OCV_MODES[mode]
    if n_channels != channels:
        raise ImageError(ErrorKind.CORRUPT, f"nChannels is {n_channels} but type {mode} ({name}) has {channels}")
    if height <= 0 or width <= 0:
        raise ImageError(ErrorKind.CORRUPT, f"invalid dimensions {width}x{height}")
    if width * height > settings.max_pixels:
        raise ImageError(
            ErrorKind.TOO_MANY_PIXELS,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {settings.max_pixels:,}",
        )
    if data is None:
        raise ImageError(ErrorKind.UNREADABLE, "the image row holds no data")
    expected = height * width * channels
    if len(data) != expected:
        kind = ErrorKind.TRUNCATED if len(data) < expected else ErrorKind.CORRUPT
        raise ImageError(kind, f"{len(data):,} bytes of data, but {width}x{height}x{channels} needs {expected:,}")
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels)
    if channels == 1:
        return Image.fromarray(np.ascontiguousarray(pixels[:, :, 0]))  # uint8 (H, W): L
    order = [2, 1, 0, 3][:channels]  # BGR(A) -> RGB(A)
    return Image.fromarray(np.ascontiguousarray(pixels[:, :, order]))  # uint8 (H, W, 3 or 4): RGB or RGBA


def decode_image(
    data: bytes | OcvImage | None,
    settings: DecodeSettings | None = None,
    draft: Callable[[int, int], tuple[str, tuple[int, int]]] | None = None,
) -> Image.Image:
    """Decode bytes into a loaded Pillow image, EXIF orientation applied.

    ``draft(width, height)`` gets the displayed size and returns (mode, (width, height)):
    JPEGs then decode at the smallest DCT scale no smaller than that size. Other
    formats ignore it. Pixels already decoded (an :class:`OcvImage`) are only converted
    (:func:`ocv_to_image`); they carry no EXIF orientation and need no draft.
    """
    settings = settings or DecodeSettings()
    if isinstance(data, OcvImage):
        return ocv_to_image(*data, settings=settings)
    img = _open(data)
    _check_pixels(img, settings.max_pixels)
    if img.format != "JPEG":
        _load(img)  # before EXIF: Pillow's PNG EXIF lookup would decode and hide errors
    orientation = exif_orientation(img)
    if draft is not None and settings.jpeg_draft and img.format == "JPEG":
        mode, (width, height) = draft(*displayed_size(img, orientation))
        width, height = max(1, width), max(1, height)
        if orientation in _TRANSPOSED_ORIENTATIONS:
            width, height = height, width
        try:
            img.draft(mode if mode in ("RGB", "L") and img.mode in ("RGB", "L", "YCbCr") else None, (width, height))
        except (OSError, ValueError):
            pass  # draft is an optimisation only
    _load(img)
    for op in _ORIENTATION_OPS.get(orientation, ()):
        img = img.transpose(op)
    return img


def probe_image(data: bytes | None, settings: DecodeSettings | None = None, full: bool = True) -> ImageInfo:
    """Validate an image and describe it.

    ``full`` decodes every byte (JPEGs at 1/8 scale, which still reads the whole
    entropy-coded stream), so truncated and corrupt files are caught at ingest
    rather than at training time. Without it only the header is read.
    """
    settings = settings or DecodeSettings()
    img = _open(data)
    _check_pixels(img, settings.max_pixels)
    # As stored: a draft decode changes mode and size.
    mode, channels, (width, height) = img.mode, colour_channels(img), img.size
    if full:
        if img.format == "JPEG" and settings.jpeg_draft:
            try:
                img.draft(None, (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            except (OSError, ValueError):
                pass
        _load(img)
        orientation = exif_orientation(img)
    else:
        orientation = _header_orientation(img)
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(img.format, mode, width, height, channels)
