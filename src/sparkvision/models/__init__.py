"""Models: the registry (timm's shape), ONNX export and runtime, model directories.

Model families register themselves when imported (``@registry.register`` on their
builders); :mod:`.registry` only holds the entries and never imports a family.
:func:`get_spec`, :func:`create_model` and :func:`list_models` here import every family
of :data:`FAMILIES` first, on every call, so they always know sparkvision's own models,
and a family that fails to import raises its own error each time rather than leaving
its models "unknown". Nothing is imported with this package itself: model directories
and the ONNX runtime need neither torch nor the families.

Without torch (the core install) the EfficientNet-Lite family still registers (its ONNX graphs
are built without torch), and the families of :data:`TORCH_FAMILIES` are left out: asking for
one of their models says to install the ``[train]`` extra.
"""

from __future__ import annotations

import importlib
from typing import Any

from sparkvision import extras
from sparkvision.models import registry

#: The modules that register sparkvision's own models.
FAMILIES = ("sparkvision.models.efficientnet", "sparkvision.models.lenet", "sparkvision.models.smallcnn",
            "sparkvision.models.fcos", "sparkvision.models.hog")
#: The families whose modules are torch networks: registered only where torch is installed.
TORCH_FAMILIES = FAMILIES[1:]


def load_families() -> None:
    """Import every model family (a no-op for those already imported)."""
    torch = extras.available("torch")
    for name in FAMILIES:
        if torch or name not in TORCH_FAMILIES:
            importlib.import_module(name)


def get_spec(name: str) -> registry.ModelSpec:
    """The registered model ``name`` (sparkvision's own, or one registered by the user)."""
    load_families()
    try:
        return registry.get_spec(name)
    except KeyError as exc:
        if extras.available("torch"):
            raise
        families = ", ".join(f.rsplit(".", 1)[1] for f in TORCH_FAMILIES)
        raise KeyError(f"{exc.args[0]}; {extras.message('torch', 'train', f'the {families} models')}") from None


def list_models(pretrained: bool = False) -> list[str]:
    """Registered model names (only those with pretrained weights if ``pretrained``)."""
    load_families()
    return registry.list_models(pretrained)


def create_model(name: str, pretrained: bool = False, num_classes: int | None = None, **kwargs: Any):
    """A torch module for ``name``; ``num_classes`` replaces the head (pretrained body kept)."""
    load_families()
    return registry.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)


__all__ = ["FAMILIES", "TORCH_FAMILIES", "create_model", "get_spec", "list_models", "load_families"]
