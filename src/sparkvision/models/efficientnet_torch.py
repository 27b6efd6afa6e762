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


class EfficientNetLiteStages(EfficientNetLite):
    """The ``_stages`` variant: every stage's output and the head's, average-pooled and concatenated.

    Its classifier reads all of them; built from ImageNet weights it is the pretrained
    Linear with zero weights on the stages' part, so the logits are the plain network's.
    """

    def stage_ends(self) -> list[int]:
        """Index of each stage's last block (every stage changes the channel count)."""
        channels = [block._project_conv.out_channels for block in self._blocks]
        return [i for i, c in enumerate(channels) if i == len(channels) - 1 or channels[i + 1] != c]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # extract_features's steps, keeping each stage's output on the way
        ends, pooled = set(self.stage_ends()), []
        x = self._swish(self._bn0(self._conv_stem(x)))
        rate = self._global_params.drop_connect_rate
        for idx, block in enumerate(self._blocks):
            x = block(x, drop_connect_rate=rate * idx / len(self._blocks) if rate else rate)
            if idx in ends:
                pooled.append(self._avg_pooling(x).flatten(1))
        x = self._swish(self._bn1(self._conv_head(x)))
        pooled.append(self._avg_pooling(x).flatten(1))
        return torch.cat(pooled, 1)

    def widen_classifier(self) -> None:
        """The head's Linear reading every stage too, with zero weights there: the same logits."""
        head = self._fc
        extra = sum(self._blocks[i]._project_conv.out_channels for i in self.stage_ends())
        wide = nn.Linear(extra + head.in_features, head.out_features)
        with torch.no_grad():
            wide.weight.zero_()
            wide.weight[:, extra:] = head.weight
            wide.bias.copy_(head.bias)
        self._fc = wide


def build(pretrained: bool = True, num_classes: int = 1000, dropout: float | None = None,
          variant: str = NAME) -> EfficientNetLite:
    """EfficientNet-Lite ``variant`` (ImageNet weights if ``pretrained``); ``num_classes`` replaces the head."""
    spec = VARIANTS[variant]
    overrides = {} if dropout is None else {"dropout_rate": dropout}
    cls = EfficientNetLiteStages if spec.stages else EfficientNetLite
    model = cls.from_name(f"efficientnet-lite{spec.index}", num_classes=1000, **overrides)
    if pretrained:
        model.load_state_dict(torch.load(spec.weights_path(), map_location="cpu", weights_only=True), strict=True)
    if spec.stages:
        model.widen_classifier()
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()
