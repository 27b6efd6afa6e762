"""The trainable architectures: layer shapes, timm-style interface, freezing for fine-tuning."""

from __future__ import annotations

import torch
from torch import nn

from sparkvision.config.training import ModelConfig
from sparkvision.models import create_model, get_spec
from sparkvision.training.engine import build_model, resolve_preprocess


def _shapes(sequential: nn.Sequential, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for layer in sequential:
        x = layer(x)
        out.append((type(layer).__name__, tuple(x.shape[1:])))
    return out


def test_lenet5_is_the_bigdl_layout():
    model = create_model("lenet5", num_classes=10)
    assert _shapes(model.features, torch.zeros(2, 1, 28, 28)) == [
        ("Conv2d", (6, 24, 24)), ("Tanh", (6, 24, 24)), ("MaxPool2d", (6, 12, 12)),
        ("Conv2d", (12, 8, 8)), ("Tanh", (12, 8, 8)), ("MaxPool2d", (12, 4, 4)),
        ("Flatten", (192,)), ("Linear", (100,)), ("Tanh", (100,)),
    ]
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    # Log-softmax output: each row's probabilities sum to 1.
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == (6 * 25 + 6) + (12 * 6 * 25 + 12) + (192 * 100 + 100) + (
        100 * 10 + 10)


def test_lenet5_1998_variant():
    model = create_model("lenet5_1998", num_classes=10)
    assert _shapes(model.features, torch.zeros(2, 1, 28, 28)) == [
        ("Conv2d", (6, 28, 28)), ("Tanh", (6, 28, 28)), ("AvgPool2d", (6, 14, 14)),
        ("Conv2d", (16, 10, 10)), ("Tanh", (16, 10, 10)), ("AvgPool2d", (16, 5, 5)),
        ("Flatten", (400,)), ("Linear", (120,)), ("Tanh", (120,)), ("Linear", (84,)), ("Tanh", (84,)),
    ]
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_timm_interface_and_reset_classifier():
    for name in ("lenet5", "lenet5_1998", "smallcnn"):
        model = create_model(name, num_classes=10).eval()
        x = torch.randn(2, 1, 28, 28)
        features = model.forward_features(x)
        assert features.shape == (2, get_spec(name).num_features)
        assert torch.allclose(model.forward_head(features), model(x))
        model.reset_classifier(3)
        assert model.get_classifier().out_features == 3 and model(x).shape == (2, 3)


def test_smallcnn_takes_28_to_64_px_grey_or_rgb():
    grey = create_model("smallcnn", num_classes=10)
    rgb = create_model("smallcnn", num_classes=5, in_chans=3)
    assert grey(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert rgb(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in rgb.modules())
    assert any(isinstance(m, nn.Dropout) for m in rgb.modules())


def test_preprocess_overrides():
    pp = resolve_preprocess(ModelConfig(arch="smallcnn", image_size=(64, 64), channels=3))
    assert pp.size == (64, 64) and pp.channels == 3 and len(pp.mean) == 3
    assert resolve_preprocess(ModelConfig(arch="lenet5")) == get_spec("lenet5").preprocess


def test_fine_tuning_freezes_all_but_the_last_stages_and_lowers_the_backbone_rate():
    cfg = ModelConfig(arch="efficientnet_lite0", unfreeze_stages=2, backbone_lr_mult=0.1)
    model, groups, frozen = build_model(cfg, num_classes=7, channels=3)
    stages = model.stages()
    assert model.get_classifier().out_features == 7
    assert all(not p.requires_grad for s in stages[:-2] for p in s.parameters())
    assert all(p.requires_grad for s in stages[-2:] for p in s.parameters())
    assert len(frozen) == len(stages) - 2
    head = {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for p in groups[0]["params"]} == head and groups[0]["lr_mult"] == 1.0
    backbone = {id(p) for s in stages[-2:] for p in s.parameters()}
    assert {id(p) for p in groups[1]["params"]} == backbone and groups[1]["lr_mult"] == 0.1
    # The pretrained body is kept: features agree with the ImageNet model's.
    reference = create_model("efficientnet_lite0", pretrained=True).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.eval().forward_features(x), reference.forward_features(x), atol=1e-5)


def test_head_only_fine_tuning():
    model, groups, frozen = build_model(ModelConfig(arch="efficientnet_lite0", unfreeze_stages=0), 4, 3)
    assert len(groups) == 1
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.get_classifier().parameters()}
