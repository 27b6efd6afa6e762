"""What each registered model costs and gives: input size, feature size, parameters, FLOPs.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one image at the
model's input size: convolutions and matrix products, two FLOPs per multiply-accumulate
(``gmacs`` is half of ``gflops``), element-wise work (batch norm, activations) not counted,
as in the published MAC figures. Building a model and counting takes seconds, so the
figures are cached in ``cache_dir()/model_facts.json``, keyed by the model's name, input
shape, the builder's source file and the torch version.

Models registered from an ONNX file have no torch module: their parameters are the
graph's initializers, and their FLOPs are not counted (``None``).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from typing import Any

from sparkvision.config import cache_dir
from sparkvision.models import get_spec, list_models
from sparkvision.models.registry import ModelSpec
from sparkvision.storage import atomic_write

log = logging.getLogger(__name__)

CACHE_FILE = "model_facts.json"


def model_facts(name: str) -> dict[str, Any]:
    """One registered model: task, input, feature and class counts, parameters, GFLOPs per image."""
    spec = get_spec(name)
    height, width = spec.preprocess.size
    facts: dict[str, Any] = {
        "name": name, "task": spec.task, "input_size": [height, width], "channels": spec.preprocess.channels,
        "num_features": spec.num_features, "num_classes": spec.num_classes, "pretrained": spec.has_pretrained,
        "source": "onnx" if spec.is_onnx else "torch", "description": spec.description,
    }
    return {**facts, **_costs(spec)}


def catalog(names: list[str] | None = None) -> list[dict[str, Any]]:
    """:func:`model_facts` of ``names`` (default: every registered model), computing the uncached once."""
    return [model_facts(name) for name in (names or list_models())]


def _costs(spec: ModelSpec) -> dict[str, Any]:
    if spec.is_onnx:
        return {"params": _onnx_params(spec.onnx_path), "gflops": None, "gmacs": None}  # type: ignore[arg-type]
    key = _cache_key(spec)
    path = cache_dir() / CACHE_FILE
    try:
        cached = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    except ValueError:
        cached = {}
    if key not in cached:
        cached[key] = _count(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(cached, indent=1, sort_keys=True) + "\n")
    return dict(cached[key])


def _cache_key(spec: ModelSpec) -> str:
    import torch

    source = inspect.getsourcefile(spec.builder) or ""  # type: ignore[arg-type]
    stat = os.stat(source) if source else None
    height, width = spec.preprocess.size
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}" if stat else "?"
    return f"{spec.name}|{spec.preprocess.channels}x{height}x{width}|{source}:{stamp}|torch {torch.__version__}"


def _count(spec: ModelSpec) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sparkvision.models import create_model

    log.info("counting parameters and FLOPs of %s (once; cached)", spec.name)
    model = create_model(spec.name, pretrained=False).eval()
    height, width = spec.preprocess.size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, spec.preprocess.channels, height, width))
    flops = counter.get_total_flops()
    return {"params": sum(p.numel() for p in model.parameters()), "gflops": round(flops / 1e9, 4),
            "gmacs": round(flops / 2e9, 4)}


def _onnx_params(path: str) -> int:
    import math

    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return sum(math.prod(t.dims) for t in graph.initializer)
