"""EfficientNet-Lite as a torch module (``efficientnet-lite-pytorch``): what :mod:`.efficientnet` builds
for training and the torch export; the ``[train]`` extra."""

from __future__ import annotations

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from sparkvision.models.efficientnet import NAME, VARIANTS
from sparkvision.models.interface import TimmInterface


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


def build(pretrained: bool = True, num_classes: int = 1000, dropout: float | None = None,
          variant: str = NAME) -> EfficientNetLite:
    """EfficientNet-Lite ``variant`` (ImageNet weights if ``pretrained``); ``num_classes`` replaces the head."""
    spec = VARIANTS[variant]
    overrides = {} if dropout is None else {"dropout_rate": dropout}
    model = EfficientNetLite.from_name(f"efficientnet-lite{spec.index}", num_classes=1000, **overrides)
    if pretrained:
        model.load_state_dict(torch.load(spec.weights_path(), map_location="cpu", weights_only=True), strict=True)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()
