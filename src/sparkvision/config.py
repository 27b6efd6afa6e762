"""Every tunable of sparkvision in one typed place.

Other modules take these dataclasses instead of loose literals, so a default
changes here and nowhere else. Environment variables (``SPARKVISION_*``) are
read only in this module.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

#: Pixels above which a decode is refused unless a caller raises the limit.
#: Pillow's own guard (89.5 MP) is the reference; tiling passes a higher limit explicitly.
DEFAULT_MAX_PIXELS = 89_478_485
#: The higher limit that tiling uses for very large scenes (e.g. 20k x 20k = 400 MP).
TILING_MAX_PIXELS = 1_000_000_000

ResizeMode = Literal["resize", "center_crop", "letterbox"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box"]

#: Normalisation presets, (mean, std) per channel in [0, 1] units.
NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # EfficientNet-Lite and Inception-style models: (x/255 - 0.5) / 0.5, i.e. [-1, 1].
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # Plain x/255.
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SPARKVISION_{name}", default)


def cache_dir() -> Path:
    """Where derived artefacts (ONNX exports of registered models) are cached."""
    root = _env("CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sparkvision"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class SparkSettings:
    """How the SparkSession is built: embedded by default, any cluster by ``master``."""

    master: str = field(default_factory=lambda: _env("MASTER", "local[*]") or "local[*]")
    app_name: str = "sparkvision"
    conf: dict[str, str] = field(default_factory=dict)
    driver_memory: str = "4g"
    executor_memory: str = "4g"
    log_level: str = "WARN"
    #: Rows per Arrow batch handed to Python UDFs: small enough that a batch of
    #: decoded 224 px images stays well below 100 MB.
    arrow_batch_rows: int = 256
    #: Target bytes per input partition of image files, and the per-file open cost
    #: Spark charges. Images are small, so the 4 MB default open cost would make
    #: partition counts depend on file counts in surprising ways.
    max_partition_bytes: int = 64 * 1024 * 1024
    open_cost_bytes: int = 256 * 1024
    ui: bool = False

    def with_conf(self, **extra: str) -> SparkSettings:
        return replace(self, conf={**self.conf, **extra})


@dataclass(frozen=True)
class DecodeSettings:
    """Rules for turning stored bytes into pixels safely."""

    max_pixels: int = field(
        default_factory=lambda: int(_env("MAX_PIXELS", str(DEFAULT_MAX_PIXELS)) or DEFAULT_MAX_PIXELS)
    )
    #: Transparent pixels are composited over this colour (RGB, 0-255) before alpha is dropped.
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    #: Let Pillow decode JPEGs at a reduced DCT scale when the target is much smaller.
    jpeg_draft: bool = True


@dataclass(frozen=True)
class PreprocessConfig:
    """How pixels become a model's input tensor; one per model, shared by training,
    batch inference and serving so they can never disagree."""

    size: tuple[int, int] = (224, 224)  # (height, width)
    channels: Literal[1, 3] = 3
    resize_mode: ResizeMode = "resize"
    interpolation: Interpolation = "bilinear"
    #: For center_crop: the shorter side is first resized to size / crop_pct.
    crop_pct: float = 0.875
    mean: tuple[float, ...] = NORMALIZATION_PRESETS["inception"][0]
    std: tuple[float, ...] = NORMALIZATION_PRESETS["inception"][1]
    #: Fill value (0-255) of letterbox borders.
    pad_value: int = 0

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean/std need {self.channels} values for {self.channels} channels, "
                f"got mean={self.mean!r} std={self.std!r}"
            )
        if self.resize_mode not in ("resize", "center_crop", "letterbox"):
            raise ValueError(f"resize_mode must be resize, center_crop or letterbox, got {self.resize_mode!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PreprocessConfig:
        """A config with a named normalisation (``imagenet``, ``inception``, ``unit``)."""
        if name not in NORMALIZATION_PRESETS:
            raise ValueError(f"unknown normalisation preset {name!r}; known: {sorted(NORMALIZATION_PRESETS)}")
        mean, std = NORMALIZATION_PRESETS[name]
        channels = overrides.get("channels", 3)
        if channels == 1:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        return cls(mean=mean, std=std, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("size", "mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


@dataclass(frozen=True)
class IngestSettings:
    """What counts as an image file when a folder is listed."""

    extensions: tuple[str, ...] = (
        ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm",
    )
    recursive: bool = True
    #: Files larger than this are reported as ``too_large`` instead of being read
    #: (a row's bytes must fit comfortably in one Arrow batch).
    max_file_bytes: int = 256 * 1024 * 1024
    #: Target compressed bytes per Parquet file written by ``ingest``.
    target_file_bytes: int = 128 * 1024 * 1024
