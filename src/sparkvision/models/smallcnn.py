"""A small modern CNN for 28-64 px images: conv-BN-ReLU blocks, dropout, global pooling.

Three stages of two 3x3 conv-BN-ReLU layers (32, 64, 128 channels), max-pool between
stages, global average pooling and dropout before the classifier. Global pooling makes
it independent of the input size, so the same network trains on 28x28 grey digits and
64x64 RGB thumbnails (``sparkvision train --image-size 64 --channels 3``). About 0.29 M
parameters: small enough to train from scratch on a few CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn

from sparkvision.config import PreprocessConfig
from sparkvision.models.interface import TimmInterface
from sparkvision.models.registry import register

PREPROCESS = PreprocessConfig(size=(28, 28), channels=1, resize_mode="resize", interpolation="bilinear",
                              mean=(0.5,), std=(0.5,))


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(TimmInterface, nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 1, widths: tuple[int, int, int] = (32, 64, 128),
                 dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_chans
        for i, width in enumerate(widths):
            layers += _conv_bn_relu(cin, width) + _conv_bn_relu(width, width)
            if i < len(widths) - 1:
                layers += [nn.MaxPool2d(2), nn.Dropout2d(dropout / 3)]
            cin = width
        self.stem_and_stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[-1]
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stem_and_stages(x)).flatten(1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


@register("smallcnn", PREPROCESS, num_classes=10, num_features=128,
          description="small CNN (conv-BN-ReLU x6, dropout, global pooling) for 28-64 px images")
def build(pretrained: bool = False, num_classes: int = 10, in_chans: int = 1, dropout: float | None = None) -> SmallCNN:
    if pretrained:
        raise ValueError("smallcnn has no pretrained weights")
    return SmallCNN(num_classes=num_classes, in_chans=in_chans, dropout=0.3 if dropout is None else dropout)
