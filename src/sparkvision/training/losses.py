"""Classification losses that take hard labels or soft (MixUp/CutMix) targets alike.

* cross-entropy, optionally with label smoothing and class weights: torch's own
  ``F.cross_entropy`` (it accepts probability targets).
* focal loss (Lin et al. 2017): ``-sum_c t_c * w_c * (1 - p_c)^gamma * log p_c`` over the
  (smoothed) target distribution ``t``, averaged over the batch; with gamma 0 and no
  weights it equals cross-entropy.

Class weights weigh each sample's terms by its class; for a weighted batch torch
divides by the sum of the weights of the hard labels (``reduction="mean"``), and the
focal loss does the same so the two agree at gamma 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparkvision.config.training import LossConfig


def balanced_weights(counts: Sequence[int]) -> list[float]:
    """scikit-learn's ``class_weight="balanced"``: n_samples / (n_classes * count)."""
    counts_arr = np.asarray(counts, dtype=np.float64)
    if (counts_arr <= 0).any():
        raise ValueError(f"balanced class weights need every class in the training set, got counts {list(counts)}")
    return (counts_arr.sum() / (len(counts_arr) * counts_arr)).tolist()


def class_weight_vector(config: LossConfig, counts: Sequence[int]) -> list[float] | None:
    if config.class_weights == "none":
        return None
    if config.class_weights == "balanced":
        return balanced_weights(counts)
    weights = [float(w) for w in config.class_weights]
    if len(weights) != len(counts):
        raise ValueError(f"{len(weights)} class weights given for {len(counts)} classes")
    return weights


def _soft_targets(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    soft = F.one_hot(targets, num_classes).to(torch.float32) if targets.dtype == torch.long else targets
    if smoothing > 0:
        soft = soft * (1 - smoothing) + smoothing / num_classes
    return soft


class FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        soft = _soft_targets(targets, logits.shape[1], self.label_smoothing)
        modulator = (1 - log_p.exp()).clamp_min(0) ** self.gamma
        terms = -(soft * modulator * log_p)
        if self.weight is None:
            return terms.sum(dim=1).mean()
        w = self.weight.to(logits.dtype)
        per_sample = (terms * w).sum(dim=1)
        if targets.dtype == torch.long:
            return per_sample.sum() / w[targets].sum()
        return per_sample.mean()


class CrossEntropy(nn.Module):
    """``F.cross_entropy`` with the configured smoothing and weights."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, weight=self.weight, label_smoothing=self.label_smoothing)


def build_loss(config: LossConfig, class_counts: Sequence[int]) -> nn.Module:
    weights = class_weight_vector(config, class_counts)
    weight = torch.tensor(weights, dtype=torch.float32) if weights is not None else None
    if config.name == "cross_entropy":
        return CrossEntropy(weight, config.label_smoothing)
    if config.name == "focal":
        return FocalLoss(config.focal_gamma, weight, config.label_smoothing)
    raise AssertionError(f"LossConfig admitted an unhandled name {config.name!r}")
