"""timm's classifier interface, written once for sparkvision's own torch networks.

Training, fine-tuning, pruning and export rely on it: ``forward_features`` gives the input
of the last Linear, ``forward_head`` the logits from it, ``get_classifier`` /
``reset_classifier`` swap that Linear for a new class count.
"""

from __future__ import annotations

import torch
from torch import nn


class TimmInterface:
    """Mixin (before the ``nn.Module`` base) for a network whose last layer is a Linear.

    A subclass defines ``forward_features``, ``forward_head`` and ``num_features``, and names the
    Linear in ``classifier_attr``; ``forward``, ``get_classifier`` and ``reset_classifier`` follow.
    """

    classifier_attr = "fc"
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_attr)

    def reset_classifier(self, num_classes: int) -> None:
        setattr(self, self.classifier_attr, nn.Linear(self.num_features, num_classes))
