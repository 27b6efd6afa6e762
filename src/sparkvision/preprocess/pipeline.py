"""Encoded bytes (or already-decoded :class:`~sparkvision.io.decode.OcvImage` pixels) in,
a model-ready float32 NCHW batch out, errors kept per row.

This is the one path from pixels to tensors: Spark featurization, training, tiling
and the HTTP service all call :class:`ImagePreprocessor` with the model's own
:class:`PreprocessConfig`, so they cannot disagree about preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sparkvision.config import DecodeSettings, PreprocessConfig
from sparkvision.io.decode import OcvImage, decode_image
from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.preprocess.color import to_model_mode
from sparkvision.preprocess.transforms import Normalizer, resize_image, scaled_size, to_array


@dataclass
class PreprocessedBatch:
    """``tensor`` holds only the rows that decoded; ``index`` says which inputs they were."""

    tensor: np.ndarray  # float32 (n_ok, C, H, W), C-contiguous
    index: np.ndarray  # int64 (n_ok,), positions in the input sequence
    errors: list[str | None]  # one per input, None where the row decoded
    #: int64 (n_ok, 2): each decoded image's (width, height) as displayed, before resizing;
    #: what maps model-input coordinates (detections, letterbox) back to the image.
    sizes: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.errors)


class ImagePreprocessor:
    """Decode + convert + resize + normalise, following one model's config."""

    def __init__(self, config: PreprocessConfig, decode: DecodeSettings | None = None) -> None:
        self.config = config
        self.decode_settings = decode or DecodeSettings()
        self.normalize = Normalizer(config.mean, config.std)
        self._mode = "L" if config.channels == 1 else "RGB"

    def _draft(self, width: int, height: int) -> tuple[str, tuple[int, int]]:
        return self._mode, scaled_size(width, height, self.config)

    def load(self, data: bytes | OcvImage | None) -> np.ndarray:
        """One image as uint8 (H, W, C) at the model's size. Raises ImageError, and only that."""
        return self.load_sized(data)[0]

    def load_sized(self, data: bytes | OcvImage | None) -> tuple[np.ndarray, tuple[int, int]]:
        """:meth:`load` and the image's displayed (width, height) before any resizing.

        Geometry (letterbox placement) is computed from that full size, not from a JPEG
        draft's reduced one, so coordinates map back to the original exactly.
        """
        displayed: list[tuple[int, int]] = []

        def draft(width: int, height: int) -> tuple[str, tuple[int, int]]:
            displayed.append((width, height))
            return self._draft(width, height)

        try:
            img = decode_image(data, self.decode_settings, draft=draft)
            size = displayed[0] if displayed else img.size
            img = to_model_mode(img, self.config.channels, self.decode_settings.alpha_background)
            return to_array(resize_image(img, self.config, source_size=size)), size
        except ImageError:
            raise
        except MemoryError:
            raise ImageError(ErrorKind.TOO_MANY_PIXELS, "not enough memory to decode this image") from None
        except Exception as exc:  # noqa: BLE001 - one odd file must not fail a whole batch or Spark task
            raise ImageError(ErrorKind.CORRUPT, f"decoding failed ({type(exc).__name__}: {exc})") from None

    def load_uint8(self, contents: Sequence[bytes | OcvImage | None]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """uint8 NHWC batch of the rows that decoded, their positions, and per-row errors."""
        return self.load_uint8_sized(contents)[:3]

    def load_uint8_sized(
        self, contents: Sequence[bytes | OcvImage | None]
    ) -> tuple[np.ndarray, np.ndarray, list[str | None], np.ndarray]:
        """:meth:`load_uint8` plus each decoded image's displayed (width, height)."""
        height, width = self.config.size
        out = np.empty((len(contents), height, width, self.config.channels), dtype=np.uint8)
        errors: list[str | None] = [None] * len(contents)
        ok: list[int] = []
        sizes: list[tuple[int, int]] = []
        for i, data in enumerate(contents):
            try:
                out[len(ok)], size = self.load_sized(data)
            except ImageError as exc:
                errors[i] = exc.message
                continue
            ok.append(i)
            sizes.append(size)
        return (out[: len(ok)], np.asarray(ok, dtype=np.int64), errors,
                np.asarray(sizes, dtype=np.int64).reshape(-1, 2))

    def __call__(self, contents: Sequence[bytes | OcvImage | None]) -> PreprocessedBatch:
        pixels, index, errors, sizes = self.load_uint8_sized(contents)
        return PreprocessedBatch(self.normalize(pixels), index, errors, sizes)
