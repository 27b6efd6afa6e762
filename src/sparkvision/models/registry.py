"""A model registry in timm's shape: register by name, ``create_model(name, pretrained=True)``.

Each entry carries its own preprocessing (:class:`PreprocessConfig`) and labels, the
single source of truth that training, Spark inference and serving all read. Entries
are either torch builders (exportable to ONNX) or ONNX files registered as they are.

This module only holds the entries. Model families register themselves when they are
imported (``@register(...)`` on a builder, as timm's ``@register_model``); this module
never imports them. :mod:`sparkvision.models` imports sparkvision's own families
before every lookup (``sparkvision.models.get_spec`` / ``create_model`` / ``list_models``),
so use those; the functions here see only what has been imported so far.

Torch modules created here follow timm's conventions where they matter to sparkvision:
``forward_features(x)`` returns pooled features ``(N, num_features)``,
``get_classifier()`` returns the head and ``reset_classifier(num_classes)`` replaces it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparkvision.config import PreprocessConfig

log = logging.getLogger(__name__)

Builder = Callable[..., Any]  # (pretrained: bool, num_classes: int | None, **kwargs) -> torch.nn.Module


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build, preprocess for, and label one registered model."""

    name: str
    preprocess: PreprocessConfig
    num_classes: int
    num_features: int | None = None
    builder: Builder | None = None  # torch models
    onnx_path: str | None = None  # models registered from an ONNX file
    labels: tuple[str, ...] | None = None
    has_pretrained: bool = False
    description: str = ""
    #: What the model's output means: ``classify`` (logits) or ``detect`` (boxes, via a task head).
    task: str = "classify"
    #: Names of the ONNX graph's input and outputs (for registered ONNX files).
    input_name: str = "input"
    output_names: dict[str, str] = field(default_factory=lambda: {"logits": "logits", "features": "features"})
    #: Where the pretrained weights file is (a function, so a missing weights package fails only
    #: this model, on use): what the ONNX export cache digests, so changed weights re-export.
    weights_path: Callable[[], str] | None = None
    #: False for a model with nothing to learn (HOG): complete as it is, so building it "pretrained"
    #: (what the featurizer asks for) needs no weights.
    needs_weights: bool = True
    #: Another registered model whose features are this model's last columns (an EfficientNet-Lite
    #: ``_stages`` variant and its plain network: the same ops in another graph, equal to float rounding):
    #: ``fit --auto`` runs only this one and slices the other's features from it.
    contains_features_of: str | None = None

    @property
    def is_onnx(self) -> bool:
        return self.onnx_path is not None


_REGISTRY: dict[str, ModelSpec] = {}


def _same_builder(a: Builder | None, b: Builder | None) -> bool:
    """Whether two builders are the same function, possibly from two imports of one module
    (a module that failed half-way is imported again on the next lookup)."""
    return a is not None and b is not None and (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register_model(spec: ModelSpec, overwrite: bool = False) -> ModelSpec:
    if spec.builder is None and spec.onnx_path is None:
        raise ValueError(f"model {spec.name!r} needs a torch builder or an ONNX file")
    current = _REGISTRY.get(spec.name)
    if current is not None and not overwrite and not _same_builder(current.builder, spec.builder):
        raise ValueError(f"a model named {spec.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[spec.name] = spec
    return spec


def register(
    name: str,
    preprocess: PreprocessConfig,
    num_classes: int,
    num_features: int | None = None,
    labels: list[str] | None = None,
    has_pretrained: bool = False,
    description: str = "",
    task: str = "classify",
    weights_path: Callable[[], str] | None = None,
    needs_weights: bool = True,
    contains_features_of: str | None = None,
    overwrite: bool = False,
) -> Callable[[Builder], Builder]:
    """Decorator: register the decorated ``builder(pretrained, num_classes, **kwargs)`` as ``name``."""

    def decorate(builder: Builder) -> Builder:
        register_model(
            ModelSpec(
                name=name, preprocess=preprocess, num_classes=num_classes, num_features=num_features,
                builder=builder, labels=tuple(labels) if labels else None, has_pretrained=has_pretrained,
                description=description, task=task, weights_path=weights_path, needs_weights=needs_weights,
                contains_features_of=contains_features_of,
            ),
            overwrite=overwrite,
        )
        return builder

    return decorate


def register_torch_model(name: str, builder: Builder, preprocess: PreprocessConfig, num_classes: int,
                         **options: Any) -> ModelSpec:
    """Register a torch module builder ``builder(pretrained, num_classes, **kwargs)``: :func:`register` as a
    call rather than a decorator (``options`` are its), returning the new entry."""
    register(name, preprocess, num_classes, **options)(builder)
    return _REGISTRY[name]


def register_onnx_model(
    name: str,
    path: str | Path,
    preprocess: PreprocessConfig,
    labels: list[str] | None = None,
    input_name: str = "input",
    logits_output: str = "logits",
    features_output: str | None = None,
    description: str = "",
    overwrite: bool = False,
) -> ModelSpec:
    """Register a backbone from the user's own ONNX file (NCHW float32 input, dynamic batch)."""
    import onnx

    path = Path(path).resolve()
    model = onnx.load(str(path), load_external_data=False)
    outputs = {o.name: o for o in model.graph.output}
    if logits_output not in outputs:
        raise ValueError(f"{path} has no output {logits_output!r}; outputs are {sorted(outputs)}")
    if features_output is not None and features_output not in outputs:
        raise ValueError(f"{path} has no output {features_output!r}; outputs are {sorted(outputs)}")
    dims = outputs[logits_output].type.tensor_type.shape.dim
    num_classes = dims[-1].dim_value if dims and dims[-1].dim_value else len(labels or [])
    output_names = {"logits": logits_output}
    num_features = None
    if features_output is not None:
        output_names["features"] = features_output
        fdims = outputs[features_output].type.tensor_type.shape.dim
        num_features = fdims[-1].dim_value or None
    return register_model(
        ModelSpec(
            name=name, preprocess=preprocess, num_classes=num_classes, num_features=num_features,
            onnx_path=str(path), labels=tuple(labels) if labels else None, description=description,
            input_name=input_name, output_names=output_names,
        ),
        overwrite=overwrite,
    )


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models()) or 'none'}")
    return _REGISTRY[name]


def list_models(pretrained: bool = False) -> list[str]:
    return sorted(n for n, s in _REGISTRY.items() if s.has_pretrained or not pretrained)


def create_model(name: str, pretrained: bool = False, num_classes: int | None = None, **kwargs: Any):
    """A torch module for ``name``; ``num_classes`` replaces the head (pretrained body kept)."""
    spec = get_spec(name)
    if spec.builder is None:
        raise ValueError(f"{name!r} is registered from an ONNX file and has no torch module")
    if pretrained and not spec.has_pretrained and spec.needs_weights:
        raise ValueError(f"{name!r} has no pretrained weights; use pretrained=False")
    return spec.builder(pretrained=pretrained, num_classes=num_classes or spec.num_classes, **kwargs)
