"""Losses against hand-worked values, torch's own cross-entropy and scikit-learn's class weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparkvision.config.training import LossConfig
from sparkvision.training.losses import FocalLoss, balanced_weights, build_loss

# Two classes with p = (1/4, 3/4): logits (0, ln 3).
LOGITS = torch.tensor([[0.0, math.log(3.0)]])


def test_cross_entropy_hand_worked():
    loss = build_loss(LossConfig(), [1, 1])
    assert loss(LOGITS, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))
    assert loss(LOGITS, torch.tensor([0])).item() == pytest.approx(-math.log(0.25))


def test_label_smoothing_hand_worked():
    loss = build_loss(LossConfig(label_smoothing=0.1), [1, 1])
    # Target distribution (0.05, 0.95).
    want = -(0.05 * math.log(0.25) + 0.95 * math.log(0.75))
    assert loss(LOGITS, torch.tensor([1])).item() == pytest.approx(want)


def test_focal_hand_worked():
    loss = build_loss(LossConfig(name="focal", focal_gamma=2.0), [1, 1])
    assert loss(LOGITS, torch.tensor([1])).item() == pytest.approx(-(0.25**2) * math.log(0.75))
    assert loss(LOGITS, torch.tensor([0])).item() == pytest.approx(-(0.75**2) * math.log(0.25))


def test_class_weights_hand_worked():
    loss = build_loss(LossConfig(class_weights=(1.0, 3.0)), [1, 1])
    logits = torch.cat([LOGITS, LOGITS])
    # (1 * -ln 0.25 + 3 * -ln 0.75) / (1 + 3): torch's weighted mean.
    want = (-math.log(0.25) - 3 * math.log(0.75)) / 4
    assert loss(logits, torch.tensor([0, 1])).item() == pytest.approx(want)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weights", [None, (0.5, 2.0, 1.0, 3.0)])
def test_focal_with_gamma_zero_is_cross_entropy(smoothing, weights):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 4, generator=gen)
    hard = torch.randint(0, 4, (32,), generator=gen)
    soft = torch.softmax(torch.randn(32, 4, generator=gen), dim=1)
    w = torch.tensor(weights) if weights else None
    focal = FocalLoss(gamma=0.0, weight=w, label_smoothing=smoothing)
    for targets in (hard, soft):
        want = F.cross_entropy(logits, targets, weight=w, label_smoothing=smoothing)
        assert focal(logits, targets).item() == pytest.approx(want.item(), rel=1e-5)


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[0.0, 4.0]])
    hard = torch.tensor([[0.0, 0.5]])
    y = torch.tensor([1])
    ce, focal = build_loss(LossConfig(), [1, 1]), build_loss(LossConfig(name="focal"), [1, 1])
    assert focal(easy, y) / ce(easy, y) < focal(hard, y) / ce(hard, y) < 1


def test_balanced_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    counts = [50, 10, 140]
    y = np.repeat(np.arange(3), counts)
    assert np.allclose(balanced_weights(counts), compute_class_weight("balanced", classes=np.arange(3), y=y))
    loss = build_loss(LossConfig(class_weights="balanced"), counts)
    assert torch.allclose(loss.weight, torch.tensor(balanced_weights(counts), dtype=torch.float32))


def test_bad_class_weights_are_refused():
    with pytest.raises(ValueError, match="3 class weights given for 2 classes"):
        build_loss(LossConfig(class_weights=(1.0, 2.0, 3.0)), [5, 5])
    with pytest.raises(ValueError, match="every class"):
        build_loss(LossConfig(class_weights="balanced"), [5, 0])


def test_log_softmax_outputs_give_the_same_loss_as_logits():
    """LeNet's head ends in log-softmax; the losses must not care."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 5, generator=gen)
    y = torch.randint(0, 5, (16,), generator=gen)
    for config in (LossConfig(), LossConfig(name="focal"), LossConfig(label_smoothing=0.1)):
        loss = build_loss(config, [1] * 5)
        assert loss(torch.log_softmax(logits, 1), y).item() == pytest.approx(loss(logits, y).item(), rel=1e-5)
