"""Pixel rules of tiles: which array a region becomes, windowing, box reduction, tile encoding.

Tiles keep what a model can use without losing information:

* 8-bit grey stays ``L``, colour becomes ``RGB`` (alpha and palettes by the rules of
  :mod:`sparkvision.preprocess.color`: composited over ``DecodeSettings.alpha_background``).
* 16-bit grey stays 16-bit (mode ``I;16``, written as 16-bit PNG), so the model's
  preprocessing applies the one documented 16-to-8-bit rule (``value / 257``) later.
  Other integer grey (signed, 32-bit) is clipped to 0-65535 first, as that rule says.
* With a window ``(center, width)`` every grey source (16-bit, signed, float, DICOM) is
  mapped to 8 bits by the linear VOI function of DICOM PS3.3 C.11.2.1.2.1:
  ``((v - (c - 0.5)) / (w - 1) + 0.5) * 255`` clipped to 0-255. Float grey needs a window
  (its range is not known from one tile).
* Pyramid level ``L`` is the box average of ``2**L x 2**L`` full-resolution blocks
  (partial blocks at the image edge average the pixels they have), rounded half up.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from sparkvision.config import DecodeSettings
from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.preprocess.color import to_model_mode

#: Modes a tile array can have: uint8 (H, W), uint8 (H, W, 3), uint16 (H, W).
TILE_MODES = ("L", "RGB", "I;16")
_SIXTEEN = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_GREY = {"1", "L", "LA", "La", "I", "F", *_SIXTEEN}


def window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear window (PS3.3 C.11.2.1.2.1) onto 0-255."""
    values = values.astype(np.float64, copy=False)
    if width <= 1:
        return np.where(values <= center - 0.5, 0, 255).astype(np.uint8)
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def grey_to_tile(values: np.ndarray, window: tuple[float, float] | None) -> tuple[np.ndarray, str]:
    """A 2-D grey array of any numeric type as a tile array and its mode."""
    if window is not None and values.dtype != np.uint8:
        return window_to_uint8(values, *window), "L"
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255, "L"
    if values.dtype == np.uint8:
        return values, "L"
    if values.dtype == np.uint16:
        return values, "I;16"
    if np.issubdtype(values.dtype, np.integer):
        return np.clip(values, 0, 65535).astype(np.uint16), "I;16"
    raise ImageError(
        ErrorKind.UNSUPPORTED,
        f"{values.dtype} grey values have no fixed range; pass a window (center, width) to tile them",
    )


def pil_to_tile(
    img: Image.Image, window: tuple[float, float] | None = None, decode: DecodeSettings | None = None
) -> tuple[np.ndarray, str]:
    """A decoded Pillow image as a tile array: 16-bit grey kept, everything else by color.py's rules."""
    background = (decode or DecodeSettings()).alpha_background
    if img.mode in _SIXTEEN:
        arr = np.asarray(img)
        if img.mode == "I":
            arr = arr.astype(np.int64)
        return grey_to_tile(arr, window)
    if img.mode == "F":
        if window is not None:
            return window_to_uint8(np.asarray(img), *window), "L"
        # color.py's rule for float images (0-1 or 0-255 by the image's maximum).
        return np.asarray(to_model_mode(img, 1, background)), "L"
    channels = 1 if img.mode in _GREY else 3  # palette images count as colour, as in ingestion
    converted = to_model_mode(img, channels, background)
    return np.asarray(converted), converted.mode


def rgba_to_tile(rgba: np.ndarray, decode: DecodeSettings | None = None) -> np.ndarray:
    """uint8 (H, W, 4) composited over the alpha background, exactly as ingestion does."""
    img = Image.fromarray(np.ascontiguousarray(rgba), mode="RGBA")
    return np.asarray(to_model_mode(img, 3, (decode or DecodeSettings()).alpha_background))


def la_to_tile(la: np.ndarray, decode: DecodeSettings | None = None) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(la), mode="LA")
    return np.asarray(to_model_mode(img, 1, (decode or DecodeSettings()).alpha_background))


def box_reduce(arr: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks (edge blocks average what they have), rounded half up."""
    if factor == 1:
        return arr
    height, width = arr.shape[:2]
    out_h, out_w = -(-height // factor), -(-width // factor)
    # uint32 sums cannot overflow for 8-bit pixels up to factor 4096, 16-bit up to 256.
    limit = 4096 if arr.dtype == np.uint8 else 256
    acc = np.uint32 if factor <= limit and arr.dtype in (np.uint8, np.uint16) else np.uint64
    if out_h * factor != height or out_w * factor != width:
        pad = [(0, out_h * factor - height), (0, out_w * factor - width)] + [(0, 0)] * (arr.ndim - 2)
        arr_padded = np.pad(arr, pad)
    else:
        arr_padded = arr
    # factor**2 strided adds: several times faster than a reshape-sum over two axes.
    sums = np.zeros((out_h, out_w, *arr.shape[2:]), dtype=acc)
    for i in range(factor):
        for j in range(factor):
            sums += arr_padded[i::factor, j::factor]
    area = factor * factor
    if area & (area - 1) == 0:  # pyramid factors are powers of two: a shift, not a division
        out = (sums + area // 2) >> (area.bit_length() - 1)
    else:
        out = (sums + area // 2) // area
    # Partial blocks along the bottom and right edges average only the pixels they have.
    last_h, last_w = height - (out_h - 1) * factor, width - (out_w - 1) * factor
    if last_h != factor:
        count = last_h * np.minimum(factor, width - np.arange(out_w) * factor).astype(acc)
        count = count[:, None] if arr.ndim == 3 else count
        out[-1] = (sums[-1] + count // 2) // count
    if last_w != factor:
        count = np.minimum(factor, height - np.arange(out_h) * factor).astype(acc) * last_w
        count = count[:, None] if arr.ndim == 3 else count
        out[:, -1] = (sums[:, -1] + count // 2) // count
    return out.astype(arr.dtype)


def tile_std(arr: np.ndarray, mode: str) -> float:
    """The background statistic: the largest per-channel standard deviation, in 0-255 units.

    Per channel, so a flat colour (e.g. water at (40, 60, 90)) counts as uniform.
    """
    if arr.size == 0:
        return 0.0
    flat = arr.reshape(-1, arr.shape[2]) if arr.ndim == 3 else arr.reshape(-1, 1)
    std = float(flat.std(axis=0, dtype=np.float64).max())
    return std / 257.0 if mode == "I;16" else std


def pad_tile(arr: np.ndarray, size: int, value: int) -> np.ndarray:
    """Pad a tile array on the right/bottom to ``size x size`` (only tiles at an edge need it)."""
    height, width = arr.shape[:2]
    if height == size and width == size:
        return arr
    out = np.full((size, size, *arr.shape[2:]), value, dtype=arr.dtype)
    out[:height, :width] = arr
    return out


def encode_tile(arr: np.ndarray, mode: str, fmt: str = "PNG", png_level: int = 1, jpeg_quality: int = 95) -> bytes:
    """Tile bytes; JPEG cannot hold 16 bits, so 16-bit tiles become 8-bit there (value / 257)."""
    if mode == "I;16":
        if fmt == "JPEG":
            arr, mode = np.rint(arr / 257.0).astype(np.uint8), "L"
        else:
            img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint16))
    if mode != "I;16":
        img = Image.fromarray(np.ascontiguousarray(arr), mode=mode)
    out = io.BytesIO()
    if fmt == "PNG":
        img.save(out, format="PNG", compress_level=png_level)
    else:
        img.save(out, format="JPEG", quality=jpeg_quality)
    return out.getvalue()
