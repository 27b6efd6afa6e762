"""LeNet-5 for 28x28 grey images, in the two layouts people mean by the name.

``lenet5`` is the network of BigDL's LeNet example (and its Analytics Zoo successor):
conv 6@5x5, tanh, max-pool 2, conv 12@5x5, tanh, max-pool 2, fc 100, tanh, fc classes,
log-softmax. Its output is log-probabilities; they are valid logits (softmax of
log-softmax is the same distribution), so the ONNX graph's ``logits`` output and every
loss in :mod:`sparkvision.training.losses` take it unchanged.

``lenet5_1998`` is LeCun et al. 1998: conv 6@5x5, subsampling, conv 16@5x5,
subsampling, fc 120, fc 84, fc classes, tanh throughout, average pooling. The paper's
32x32 input is MNIST's 28x28 with a 2-pixel border, so the first conv pads by 2.
"""

from __future__ import annotations

import torch
from torch import nn

from sparkvision.config import PreprocessConfig
from sparkvision.models.interface import TimmInterface
from sparkvision.models.registry import register

#: 28x28 grey, ``(x/255 - 0.5) / 0.5``. ``sparkvision train --normalize data`` replaces
#: mean/std by the training set's own (what the BigDL recipe does).
PREPROCESS = PreprocessConfig(size=(28, 28), channels=1, resize_mode="resize", interpolation="bilinear",
                              mean=(0.5,), std=(0.5,))


class LeNet5(TimmInterface, nn.Module):
    """timm-style LeNet: ``forward_features`` gives the input of the last Linear."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, variant: str = "bigdl") -> None:
        super().__init__()
        if variant not in ("bigdl", "1998"):
            raise ValueError(f"LeNet variant must be 'bigdl' or '1998', got {variant!r}")
        self.variant = variant
        if variant == "bigdl":
            self.features = nn.Sequential(
                nn.Conv2d(in_chans, 6, 5), nn.Tanh(), nn.MaxPool2d(2),  # 28 -> 24 -> 12
                nn.Conv2d(6, 12, 5), nn.Tanh(), nn.MaxPool2d(2),  # 12 -> 8 -> 4
                nn.Flatten(), nn.Linear(12 * 4 * 4, 100), nn.Tanh(),
            )
            hidden = 100
        else:
            self.features = nn.Sequential(
                nn.Conv2d(in_chans, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),  # 28 -> 28 -> 14
                nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),  # 14 -> 10 -> 5
                nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
            )
            hidden = 84
        self.num_features = hidden
        self.fc = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.fc(features)
        return torch.log_softmax(logits, dim=1) if self.variant == "bigdl" else logits


@register("lenet5", PREPROCESS, num_classes=10, num_features=100,
          description="LeNet-5 as in BigDL's example: conv6-tanh-pool, conv12-tanh-pool, fc100-tanh, fc, "
          "log-softmax; 28x28 grey")
def build(pretrained: bool = False, num_classes: int = 10, in_chans: int = 1) -> LeNet5:
    if pretrained:
        raise ValueError("lenet5 has no pretrained weights")
    return LeNet5(num_classes=num_classes, in_chans=in_chans, variant="bigdl")


@register("lenet5_1998", PREPROCESS, num_classes=10, num_features=84,
          description="LeNet-5 of LeCun et al. 1998: conv6, avg-pool, conv16, avg-pool, fc120, fc84, fc; tanh; "
          "28x28 grey")
def build_1998(pretrained: bool = False, num_classes: int = 10, in_chans: int = 1) -> LeNet5:
    if pretrained:
        raise ValueError("lenet5_1998 has no pretrained weights")
    return LeNet5(num_classes=num_classes, in_chans=in_chans, variant="1998")
