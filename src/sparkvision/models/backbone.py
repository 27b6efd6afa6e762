"""What ``--backbone NAME|path/to/model.onnx|hf:DIR_OR_ID`` means: a registered model, or the user's
ONNX file registered now, or a Hugging Face model exported to ONNX and registered now
(:mod:`sparkvision.models.huggingface`).

A user's ONNX file declares how images become its input, in a sidecar JSON next to it
(``model.onnx`` -> ``model.json``) or through arguments, which win over the sidecar::

    {"size": 224, "norm": "imagenet", "labels": "labels.txt"}

Sidecar keys: ``size`` (an int, or ``[height, width]``; default: the graph's input, when
fixed), ``norm`` (a preset: ``imagenet``, ``inception``, ``unit``) or ``mean`` and ``std``,
and optionally any other :class:`PreprocessConfig` field (``resize_mode``, ``interpolation``,
``channels``, ``crop_pct``), ``labels`` (a list, or a text file beside the sidecar, one name a
line), ``features_output`` / ``logits_output`` (graph output names; default: outputs named
``features`` / ``logits``, else the graph's only output for both).

The file is registered under ``onnx:<stem>-<first 8 hex digits of its SHA-256>``, so the
same file always gets the same name and two files never share one. A Spark stage that
uses it embeds the graph when saved, so the saved model runs without the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sparkvision.config import NORMALIZATION_PRESETS, PreprocessConfig
from sparkvision.models import get_spec
from sparkvision.models.registry import ModelSpec, register_onnx_model

ONNX_PREFIX = "onnx:"
HF_PREFIX = "hf:"
_PREPROCESS_KEYS = ("resize_mode", "interpolation", "channels", "crop_pct", "pad_value")


class UndeclaredPreprocessing(ValueError):
    """An ONNX file whose input size or normalisation nothing declares."""


def is_onnx_file(backbone: str) -> bool:
    """Whether ``--backbone`` names a file rather than a registered model."""
    return backbone.lower().endswith(".onnx")


def is_hf_backbone(backbone: str) -> bool:
    """Whether ``--backbone`` names a Hugging Face model (``hf:DIR_OR_ID``) rather than a registered one."""
    return backbone.startswith(HF_PREFIX)


def sidecar_path(onnx_file: str | Path) -> Path:
    return Path(onnx_file).with_suffix(".json")


def resolve_backbone(backbone: str, size: tuple[int, int] | None = None, norm: str | None = None) -> str:
    """The registered name for ``backbone``: a model name as it is, a ``.onnx`` path or an
    ``hf:DIR_OR_ID`` registered first.

    ``size`` and ``norm`` declare an ONNX file's preprocessing (over its sidecar's); a
    registered model (and a Hugging Face one) has its own, so giving them with it is an error.
    """
    if is_onnx_file(backbone):
        return register_onnx_file(backbone, size=size, norm=norm).name
    if size is not None or norm is not None:
        raise ValueError("--backbone-size and --backbone-norm declare an ONNX file's preprocessing; "
                         f"{backbone!r} is a registered model with its own")
    if is_hf_backbone(backbone) and not _registered(backbone):
        from sparkvision.models.huggingface import register_hf_model

        return register_hf_model(backbone).name
    get_spec(backbone)  # an unknown name fails here, listing the known ones
    return backbone


def _registered(name: str) -> bool:
    try:
        get_spec(name)
    except KeyError:
        return False
    return True


def register_onnx_file(path: str | Path, size: tuple[int, int] | None = None, norm: str | None = None) -> ModelSpec:
    """Register the user's ONNX file with the preprocessing its sidecar and these arguments declare."""
    import onnx

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"ONNX backbone {path} does not exist")
    data = path.read_bytes()
    graph = onnx.load_from_string(data).graph
    sidecar = sidecar_path(path)
    declared: dict[str, Any] = json.loads(sidecar.read_text("utf-8")) if sidecar.is_file() else {}
    if not isinstance(declared, dict):
        raise ValueError(f"{sidecar} must hold a JSON object, e.g. {{\"size\": 224, \"norm\": \"imagenet\"}}")
    if size is not None:
        declared["size"] = list(size)
    if norm is not None:
        declared.update(norm=norm, mean=None, std=None)
    outputs = [o.name for o in graph.output]
    logits = declared.get("logits_output") or _role_output(outputs, "logits", path)
    features = declared.get("features_output") or _role_output(outputs, "features", path)
    return register_onnx_model(
        f"{ONNX_PREFIX}{path.stem}-{hashlib.sha256(data).hexdigest()[:8]}", path,
        _preprocess(declared, graph, path), labels=_labels(declared.get("labels"), sidecar),
        input_name=graph.input[0].name, logits_output=logits, features_output=features,
        description=f"user ONNX file {path}", overwrite=True,
    )


def _role_output(outputs: list[str], role: str, path: Path) -> str:
    if role in outputs:
        return role
    if len(outputs) == 1:
        return outputs[0]
    raise ValueError(f"{path} has outputs {outputs}: name the {role} one in its sidecar "
                     f"{sidecar_path(path).name} ('{role}_output')")


def _preprocess(declared: dict[str, Any], graph: Any, path: Path) -> PreprocessConfig:
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    size = declared.get("size")
    if size is None and len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
        size = dims[2:]
    if size is None:
        raise UndeclaredPreprocessing(f"{path}'s input size is not fixed in the graph: declare it (--backbone-size, or "
                         f"'size' in {sidecar_path(path).name})")
    size = (int(size), int(size)) if isinstance(size, int | float) else tuple(int(s) for s in size)
    channels = int(declared.get("channels") or (dims[1] if len(dims) == 4 and dims[1] in (1, 3) else 3))
    options = {k: declared[k] for k in _PREPROCESS_KEYS if declared.get(k) is not None}
    options.update(size=size, channels=channels)
    if declared.get("mean") is not None and declared.get("std") is not None:
        return PreprocessConfig(mean=tuple(declared["mean"]), std=tuple(declared["std"]), **options)
    norm = declared.get("norm")
    if norm is None:
        raise UndeclaredPreprocessing(f"declare how {path.name}'s pixels are normalised: --backbone-norm "
                         f"{'|'.join(sorted(NORMALIZATION_PRESETS))}, or 'norm' (or 'mean' and 'std') in "
                         f"{sidecar_path(path).name}")
    return PreprocessConfig.preset(norm, **options)


def _labels(labels: Any, sidecar: Path) -> list[str] | None:
    if labels is None or isinstance(labels, list):
        return labels
    text = (sidecar.parent / str(labels)).read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
