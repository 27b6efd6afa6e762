"""Structured pruning with ``torch.nn.utils.prune``: whole convolution output channels, then ONNX.

Each selected ``Conv2d`` loses the ``amount`` fraction of its output channels with the
smallest L-n norm (``prune.ln_structured(dim=0)``), made permanent with
``prune.remove``. The pruned filters are exact zeros; the layer shapes are unchanged,
so ONNX Runtime does the same arithmetic (zeros compress: the gzip size shrinks, the
speed does not). What pruning costs in accuracy is measured like every optimisation
(:mod:`sparkvision.deploy.measure`).

Fine-tuning afterwards (:func:`fine_tune_pruned`) recovers accuracy: the pruned module
is saved with ``torch.save`` and trained by :func:`sparkvision.training.fit` like any
``sparkvision train`` run (TorchDistributor ranks, checkpoints, a model directory),
starting from its weights (``ModelConfig.init_from``) with the pruned channels held at
zero after every optimiser step (``ModelConfig.keep_pruned``); rank 0's exported weights
are loaded back and checked to be pruned still.

The torch model of a model directory is rebuilt from what the directory records:
a registered pretrained backbone (``export_registered``), a backbone + exported MLlib
head (``head.npz``), or a ``sparkvision train`` checkpoint. The rebuilt model must
reproduce the directory's ``model.onnx`` before it is pruned.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from sparkvision.config import PruneSettings
from sparkvision.deploy.export import HEAD_FILE, Head
from sparkvision.models.model_dir import ModelCard, load_card, onnx_path
from sparkvision.training.masks import zero_output_channels

log = logging.getLogger(__name__)


@dataclass
class PruneSummary:
    """Channels zeroed per layer."""

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (zeroed, total)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def zeroed(self) -> int:
        return sum(z for z, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.layers.values())

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "layers_pruned": len(self.layers), "channels_zeroed": self.zeroed,
                "channels_total": self.total, "fraction_zeroed": self.zeroed / max(1, self.total)}


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels


def prunable_convs(model: nn.Module, include_depthwise: bool = False) -> list[tuple[str, nn.Conv2d]]:
    return [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and module.out_channels > 1
        and (include_depthwise or not is_depthwise(module))
    ]


def zeroed_channels(conv: nn.Conv2d) -> int:
    """Output channels whose whole filter is zero."""
    return int((conv.weight.detach().flatten(1).abs().sum(dim=1) == 0).sum())


def prune_channels(model: nn.Module, settings: PruneSettings | None = None) -> PruneSummary:
    """Zero the weakest output channels of every selected convolution, in place and permanently."""
    settings = settings or PruneSettings()
    summary = PruneSummary(settings={"amount": settings.amount, "norm": settings.norm,
                                     "include_depthwise": settings.include_depthwise, "dim": "output channels"})
    for name, conv in prunable_convs(model, settings.include_depthwise):
        prune.ln_structured(conv, "weight", amount=settings.amount, n=settings.norm, dim=0)
        prune.remove(conv, "weight")
        summary.layers[name] = (zeroed_channels(conv), conv.out_channels)
    log.info("pruned %d of %d output channels in %d convolutions", summary.zeroed, summary.total, len(summary.layers))
    return summary


def gzip_size(path: str | Path) -> int:
    """Compressed size: what zeroed channels save when a model is shipped."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=6))


# ---------------------------------------------------------------- torch model of a model directory


class HeadOnBackbone(nn.Module):
    """A registered backbone's features (or logits) followed by an exported MLlib head."""

    def __init__(self, backbone: nn.Module, feature_output: str, head: Head) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_output = feature_output
        layers: list[nn.Module] = []
        for layer in head.layers:
            linear = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(layer.weight.astype(np.float32)))
                linear.bias.copy_(torch.from_numpy(layer.bias.astype(np.float32)))
            layers.append(linear)
            if layer.activation == "sigmoid":
                layers.append(nn.Sigmoid())
        self.head = nn.Sequential(*layers)

    def get_classifier(self) -> nn.Module:
        return self.head

    def stages(self) -> list[nn.Module]:
        """The backbone's stages, so fine-tuning can freeze the early ones."""
        return self.backbone.stages() if hasattr(self.backbone, "stages") else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(x)
        if self.feature_output.endswith("logits"):
            features = self.backbone.forward_head(features)
        return self.head(features)


def torch_model(model_dir: str | Path, card: ModelCard | None = None) -> nn.Module:
    """The model directory's network as a torch module giving its ``logits``, checked against its ONNX graph."""
    from sparkvision.models import create_model

    model_dir = Path(model_dir)
    card = card or load_card(model_dir)
    prov = card.provenance
    exported = prov.get("onnx_export")
    if exported and (model_dir / exported.get("head", HEAD_FILE)).is_file():
        backbone = create_model(exported["backbone"], pretrained=True)
        model: nn.Module = HeadOnBackbone(backbone, exported["feature_output"],
                                          Head.load(model_dir / exported.get("head", HEAD_FILE)))
    elif prov.get("source") == "registry" and prov.get("pretrained"):
        model = create_model(prov["model"], pretrained=True)
    elif (model_dir / "checkpoints").is_dir():
        model = _from_checkpoint(model_dir, card)
    else:
        raise ValueError(
            f"cannot rebuild a torch model for {model_dir}: pruning needs a registered pretrained model "
            "(sparkvision export --registered), an exported pipeline (sparkvision export MODEL_DIR) or a "
            "sparkvision train model directory with checkpoints"
        )
    model.eval()
    _check_matches_onnx(model, model_dir, card)
    return model


def _from_checkpoint(model_dir: Path, card: ModelCard) -> nn.Module:
    from sparkvision.config.training import TrainConfig
    from sparkvision.training.engine import build_model, latest_checkpoint, trained_weights

    path = latest_checkpoint(model_dir)
    if path is None:
        raise ValueError(f"{model_dir}/checkpoints holds no checkpoint")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    config = TrainConfig.from_dict(payload["config"])
    model, _, _ = build_model(config.model, len(payload["classes"]), card.preprocess.channels)
    # The weights model.onnx was exported from: the best epoch's unless the run exported its last.
    model.load_state_dict(trained_weights(model_dir, config))
    return model


def _check_matches_onnx(model: nn.Module, model_dir: Path, card: ModelCard, atol: float = 1e-3) -> None:
    """The rebuilt torch model must give the directory's own ONNX logits (else we would prune another model)."""
    import onnxruntime as ort

    height, width = card.preprocess.size
    x = torch.Generator().manual_seed(0)
    sample = (torch.rand(2, card.preprocess.channels, height, width, generator=x) * 2 - 1)
    session = ort.InferenceSession(str(onnx_path(model_dir, card)), providers=["CPUExecutionProvider"])
    want = session.run(["logits"], {session.get_inputs()[0].name: sample.numpy()})[0]
    with torch.no_grad():
        got = model(sample).numpy()
    scale = max(1.0, float(np.abs(want).max()))
    if got.shape != want.shape or float(np.abs(got - want).max()) > atol * scale:
        raise ValueError(
            f"the torch model rebuilt for {model_dir} does not reproduce its model.onnx "
            f"(max |diff| {float(np.abs(got - want).max()) if got.shape == want.shape else 'shape'}); "
            "refusing to prune a different model"
        )


def export_pruned(model: nn.Module, out_path: str | Path, card: ModelCard) -> Path:
    from sparkvision.models.onnx_export import export_onnx

    height, width = card.preprocess.size
    return export_onnx(model, out_path, (card.preprocess.channels, height, width), with_features=False)


# ---------------------------------------------------------------- fine-tuning after pruning


@dataclass
class FineTuneRequest:
    """Where to fine-tune a pruned model, and how (a :class:`TrainConfig`; its model part
    is filled in from the pruned network)."""

    train: str
    val: str | None = None
    config: Any = None  # TrainConfig; default FINE_TUNE_PRUNED over the defaults

    def train_config(self):
        from sparkvision.config.training import FINE_TUNE_PRUNED, TrainConfig, apply_overrides

        return self.config if self.config is not None else apply_overrides(TrainConfig(), FINE_TUNE_PRUNED)


def zero_channel_sets(model: nn.Module) -> dict[str, set[int]]:
    """Output channels with an all-zero filter, per convolution."""
    return {
        name: set(np.flatnonzero(zero_output_channels(conv.weight).numpy()).tolist())
        for name, conv in prunable_convs(model, include_depthwise=True)
    }


def fine_tune_pruned(spark, model: nn.Module, card: ModelCard, request: FineTuneRequest,
                     work_dir: str | Path) -> dict[str, Any]:
    """Fine-tune the pruned ``model`` in place through :func:`sparkvision.training.fit`.

    The network's outputs keep the card's label order and its inputs the card's
    preprocessing. Raises if a pruned channel came back non-zero.
    """
    from dataclasses import replace

    from sparkvision.training.distributor import fit
    from sparkvision.training.engine import trained_weights

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    start = work_dir / "pruned-module.pt"
    torch.save(model, start)
    pruned = zero_channel_sets(model)
    config = request.train_config()
    config = replace(config, model=replace(config.model, arch=card.architecture or card.name, init_from=str(start),
                                           keep_pruned=True, normalize="model"))
    out = work_dir / "fine-tune"
    log.info("fine-tuning the pruned model on %s for %d epochs", request.train, config.epochs)
    result = fit(spark, config, train=request.train, val=request.val, out=str(out), name=f"{card.name}-fine-tune",
                 overwrite=True, labels=list(card.labels), preprocess=card.preprocess)
    model.load_state_dict(trained_weights(out, config))
    model.eval()
    after = zero_channel_sets(model)
    lost = {name: sorted(chans - after[name]) for name, chans in pruned.items() if chans - after[name]}
    if lost:
        raise RuntimeError(f"fine-tuning un-pruned channels {lost}; the pruned masks were not kept")
    metrics = result.metrics
    return {
        "train_source": request.train, "val_source": request.val, "epochs": config.epochs,
        "epochs_run": metrics.get("epochs_run"), "exported_epoch": metrics.get("exported_epoch"),
        "batch_size": config.batch_size, "optimizer": config.optimizer.name, "lr": config.optimizer.lr,
        "schedule": config.schedule.name, "workers": metrics.get("workers"),
        "val_top1": metrics.get("val_top1"), "train_top1": metrics.get("train_top1"),
        "channels_kept_zero": sum(len(c) for c in pruned.values()),
        "history": [{k: h.get(k) for k in ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1")
                     if k in h} for h in result.history],
    }
