"""Mode conversion rules: any Pillow mode into the 1 or 3 channels a model wants.

The rules, in order:

* ``1`` (bilevel) and ``L``: grey; replicated to RGB for 3-channel models.
* ``LA``, ``RGBA``, ``PA``, ``La``/``RGBa`` and palette images with transparency: composited
  over ``DecodeSettings.alpha_background`` (white by default), then alpha is dropped.
  Dropping alpha without compositing would expose whatever colour the encoder left
  under fully transparent pixels.
* ``P`` without transparency: expanded through its palette.
* ``CMYK``: Pillow's conversion, ``R = 255 * (1 - C/255) * (1 - K/255)`` and likewise
  for G (M) and B (Y); Adobe-inverted CMYK JPEGs are handled by Pillow's JPEG decoder.
  ICC profiles are not applied.
* ``I;16*`` and ``I`` (16-bit grey, as in 16-bit PNG/TIFF): the full 0-65535 range maps
  linearly onto 0-255 (``value / 257``). No auto-contrast: the same pixel value always
  gives the same input, which auto-contrast would break between images. Values
  outside 0-65535 in ``I`` images are clipped.
* ``F`` (32-bit float): taken as 0-1 when the image's maximum is <= 1, else as 0-255;
  clipped to that range.
* ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: Pillow's conversion to RGB.
* 3-channel images for 1-channel models: ITU-R 601 luma (Pillow's ``convert("L")``,
  ``(19595 R + 38470 G + 7471 B + 32768) >> 16``), so grey stays exactly grey.

A mode Pillow cannot convert raises :class:`ImageError` of kind ``unsupported``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sparkvision.io.errors import ErrorKind, ImageError

_ALPHA_MODES = {"LA", "RGBA", "PA", "La", "RGBa"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float32)
        finite = arr[np.isfinite(arr)]
        top = 1.0 if finite.size == 0 or float(finite.max()) <= 1.0 else 255.0
        arr = np.nan_to_num(arr, nan=0.0, posinf=top, neginf=0.0)
        scaled = np.clip(arr, 0.0, top) * (255.0 / top)
    else:
        scaled = np.clip(arr.astype(np.float32), 0, 65535) / 257.0
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def _composite(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if img.mode == "La":
        img = img.convert("LA")  # Pillow converts premultiplied grey only to LA
    rgba = img.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    base.alpha_composite(rgba)
    return base.convert("RGB")


def to_model_mode(img: Image.Image, channels: int, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Return ``img`` as ``L`` (channels=1) or ``RGB`` (channels=3) by the rules above."""
    mode = img.mode
    target = "L" if channels == 1 else "RGB"
    try:
        if mode in _SIXTEEN_BIT or mode == "F":
            img = _high_depth_to_l(img)
        elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
            img = _composite(img, background)
        elif mode == "1":
            img = img.convert("L")
        elif mode not in ("L", "RGB"):
            img = img.convert("RGB")
        return img if img.mode == target else img.convert(target)
    except (ValueError, OSError, TypeError) as exc:
        raise ImageError(ErrorKind.UNSUPPORTED, f"cannot convert mode {mode} to {target} ({exc})") from None
