"""``--backbone hf:DIR_OR_ID``: a Hugging Face ``transformers`` vision model, exported to ONNX once.

``DIR_OR_ID`` is a ``save_pretrained`` directory, or a hub id (``facebook/dinov2-small``,
``ID@REVISION`` for a revision) that the Hugging Face cache or hub provides (through
``huggingface_hub.snapshot_download``, which honours ``HF_HUB_OFFLINE`` and ``HF_HOME``).
The model is loaded with ``from_pretrained`` and exported to ONNX under
``cache_dir()/hf``, keyed by a digest of its files' contents (``*.json`` configs and the
``*.safetensors`` / ``*.bin`` weights) and of the exporting versions, so a changed directory
exports again and an unchanged one never does. The export is checked against the torch
model before it is kept. It is then registered as ``hf:<name>-<8 hex digits of the
content digest>`` through :func:`.registry.register_onnx_model`, so from there on it is an
ONNX backbone like the user's own file: the Spark stages embed its graph when saved, and
``model.onnx`` of ``fit`` holds it with the head.

What the graph outputs:

* ``features``, one pooled vector per image. With an image-classification head, the
  head's own input (ViT and DeiT: the CLS token after the final layer norm; ConvNeXt: the
  pooled, normalised map; DINOv2: the CLS token next to the mean patch token); otherwise
  ``image_embeds`` (CLIP with projection), else ``pooler_output`` (ConvNeXt, CLIP vision,
  DINOv2: its normalised CLS token, ViT with a pooler), else the CLS token of
  ``last_hidden_state`` (a spatial mean for a 4-D one).
* ``logits``, only where the directory holds an image-classification head
  (``config.architectures`` names a ``...ForImageClassification``); its labels are
  ``config.id2label``, so ``classify`` names them. A model without one gives features only.

Preprocessing comes from the model's image processor (``preprocessor_config.json``, read by
``AutoImageProcessor``), mapped onto :class:`PreprocessConfig` by :func:`processor_preprocess`.

``transformers`` is an optional extra: ``pip install 'sparkvision[hf]'``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from sparkvision.config import PreprocessConfig
from sparkvision.models.backbone import HF_PREFIX
from sparkvision.models.registry import ModelSpec, register_model, register_onnx_model

log = logging.getLogger(__name__)

#: The files of a model directory that ``from_pretrained`` reads, and the digest covers.
MODEL_FILES = ("*.json", "*.safetensors", "*.bin")
#: Largest |ONNX - torch| accepted at export, relative to the output's largest magnitude (at least 1).
EXPORT_TOLERANCE = 1e-3
#: Bumped when what the graph computes changes, so older exports are not reused.
GRAPH_VERSION = 1
INSTALL_HINT = "pip install 'sparkvision[hf]'"

# PIL's resampling filters by number, as processors store them (hamming has no equivalent here).
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "bilinear"}


class HFBackboneError(ValueError):
    """A ``--backbone hf:...`` that cannot be used; the message is one line that says why."""


def register_hf_model(source: str) -> ModelSpec:
    """Register ``source`` (``DIR_OR_ID``, with or without ``hf:``), exporting it to ONNX unless cached."""
    _require_transformers()
    source = source.removeprefix(HF_PREFIX)
    directory = model_directory(source)
    content = content_digest(directory)
    slug = _slug(source, directory)
    onnx_file, manifest_file = _cache_paths(slug, content)
    manifest = _cached_manifest(onnx_file, manifest_file)
    if manifest is None:
        manifest = export_hf_model(directory, onnx_file, manifest_file, source)
    labels = manifest.get("labels")
    spec = register_onnx_model(
        f"{HF_PREFIX}{slug}-{content[:8]}", onnx_file, PreprocessConfig.from_dict(manifest["preprocess"]),
        labels=labels, logits_output="logits" if labels else "features", features_output="features",
        description=f"Hugging Face {manifest['architecture']} from {source}", overwrite=True,
    )
    if not labels:  # features only: the one output serves both roles, and no class is scored
        spec = register_model(dataclasses.replace(spec, num_classes=0), overwrite=True)
    return spec


def _cached_manifest(onnx_file: Path, manifest_file: Path) -> dict[str, Any] | None:
    """The manifest of a finished export (written after its checked graph), or None."""
    if not (onnx_file.is_file() and manifest_file.is_file()):
        return None
    try:
        return json.loads(manifest_file.read_text("utf-8"))
    except ValueError:
        return None


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise HFBackboneError(f"--backbone hf:... needs the transformers package: {INSTALL_HINT}") from None


def model_directory(source: str) -> Path:
    """The local directory of ``source``: itself, or the hub id's snapshot in the Hugging Face cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HFBackboneError(f"hf:{source}: {path} has no config.json (expected a directory written by "
                                  "save_pretrained)")
        return path.resolve()
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise HFBackboneError(f"hf:{source}: no such directory (nor a hub id like 'facebook/dinov2-small')")
    from huggingface_hub import snapshot_download

    repo_id, _, revision = source.partition("@")
    try:
        snapshot = snapshot_download(repo_id, revision=revision or None, allow_patterns=list(MODEL_FILES))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, bad id: all one line for the user
        reason = " ".join(str(exc).split())[:300]
        raise HFBackboneError(f"hf:{source} is not a local directory, and neither the Hugging Face cache nor the "
                              f"hub provides it ({type(exc).__name__}: {reason})") from None
    return Path(snapshot)


_DIGESTS: dict[tuple[str, ...], str] = {}


def content_digest(directory: Path) -> str:
    """SHA-256 over the names and contents of the model's files (configs and weights), hex.

    Remembered in this process per (file, size, mtime), so a second resolve reads nothing.
    """
    files = sorted({f for pattern in MODEL_FILES for f in directory.glob(pattern) if f.is_file()})
    stamp = tuple(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}:{f.resolve()}" for f in files)
    if stamp not in _DIGESTS:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode() + b"\0")
            with f.open("rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
        _DIGESTS[stamp] = digest.hexdigest()
    return _DIGESTS[stamp]


def _slug(source: str, directory: Path) -> str:
    name = source.partition("@")[0].rstrip("/").split("/")[-1] or directory.name
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _cache_paths(slug: str, content: str) -> tuple[Path, Path]:
    import torch
    import transformers

    from sparkvision import __version__
    from sparkvision.config import cache_dir
    from sparkvision.models.onnx_export import OPSET

    tools = f"{content}:{__version__}:{transformers.__version__}:{torch.__version__}:{OPSET}:{GRAPH_VERSION}"
    key = hashlib.sha256(tools.encode()).hexdigest()[:16]
    folder = cache_dir() / "hf"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{slug}-{key}.onnx", folder / f"{slug}-{key}.json"


# ---------------------------------------------------------------- preprocessing


def _dims(value: Any) -> dict[str, int]:
    """A processor's size (a dict, a ``SizeDict``, or a bare int) as a dict of the keys it sets."""
    if value is None:
        return {}
    if isinstance(value, int):
        return {"shortest_edge": value}
    items = value.items() if isinstance(value, dict) else (
        (k, getattr(value, k, None)) for k in ("height", "width", "shortest_edge", "longest_edge"))
    return {k: int(v) for k, v in items if v is not None}


def _triple(value: Any, default: float) -> tuple[float, ...]:
    if value is None:
        value = default
    values = [float(v) for v in value] if isinstance(value, list | tuple) else [float(value)]
    return tuple(values * 3) if len(values) == 1 else tuple(values)


def processor_preprocess(processor: Any, name: str = "model") -> PreprocessConfig:
    """A Hugging Face image processor's resize, crop, rescale and normalisation as a :class:`PreprocessConfig`.

    * ``size`` ``{height, width}``: ``resize`` to it (then, with ``do_center_crop``, a
      ``center_crop`` of ``crop_size`` with ``crop_pct = crop / size``, which keeps the
      aspect where the processor squashes first: the same on square images).
    * ``size`` ``{shortest_edge: S}`` with ``do_center_crop`` (CLIP, DINOv2): ``center_crop``
      of ``crop_size`` with ``crop_pct = crop / S``, i.e. the shorter side to ``S``, then the
      centre. ConvNeXt's own rule (no ``crop_size``, ``crop_pct``): below 384 the shorter
      side to ``S / crop_pct`` and the centre ``S x S``, from 384 up a resize to ``S x S``.
      Without any crop the centre ``S x S`` is taken (a batch needs one size).
    * ``rescale_factor`` and ``image_mean`` / ``image_std`` fold into mean and std of ``x / 255``;
      ``resample`` gives the interpolation.
    """
    get = lambda key: getattr(processor, key, None)  # noqa: E731
    if get("do_resize") is False:
        raise HFBackboneError(f"{name}'s image processor does not resize (do_resize false): sparkvision needs "
                              "a fixed input size")
    size, crop = _dims(get("size")), _dims(get("crop_size")) if get("do_center_crop") else {}
    crop_hw = (crop["height"], crop["width"]) if "height" in crop and "width" in crop else None
    options: dict[str, Any] = {}
    if "height" in size and "width" in size:
        hw = (size["height"], size["width"])
        if crop_hw and crop_hw != hw:
            options = {"size": crop_hw, "resize_mode": "center_crop",
                       "crop_pct": min(1.0, max(crop_hw[0] / hw[0], crop_hw[1] / hw[1]))}
        else:
            options = {"size": hw, "resize_mode": "resize"}
    elif "shortest_edge" in size:
        edge = size["shortest_edge"]
        if crop_hw:
            options = {"size": crop_hw, "resize_mode": "center_crop", "crop_pct": min(1.0, max(crop_hw) / edge)}
        elif get("crop_pct") is not None and edge < 384:  # ConvNeXt
            options = {"size": (edge, edge), "resize_mode": "center_crop", "crop_pct": float(get("crop_pct"))}
        elif get("crop_pct") is not None:
            options = {"size": (edge, edge), "resize_mode": "resize"}
        else:
            options = {"size": (edge, edge), "resize_mode": "center_crop", "crop_pct": 1.0}
    else:
        raise HFBackboneError(f"{name}'s image processor gives no fixed input size (size={dict(size)}): "
                              "sparkvision needs height and width, or shortest_edge")
    resample = get("resample")
    options["interpolation"] = _RESAMPLE.get(int(resample), "bilinear") if resample is not None else "bilinear"
    # The processor computes (x * rescale - mean) / std; sparkvision (x / 255 - mean') / std'.
    rescale = float(get("rescale_factor") or 1 / 255) if get("do_rescale") is not False else 1.0
    mean = _triple(get("image_mean"), 0.0) if get("do_normalize") is not False else (0.0,) * 3
    std = _triple(get("image_std"), 1.0) if get("do_normalize") is not False else (1.0,) * 3
    unit = 255.0 * rescale
    return PreprocessConfig(mean=tuple(m / unit for m in mean), std=tuple(s / unit for s in std), **options)


# ---------------------------------------------------------------- the model and its export


def _load_model(directory: Path) -> tuple[Any, bool]:
    """(the model ``directory`` holds, in eval mode; whether it has an image-classification head)."""
    import transformers
    from torch import nn

    config = transformers.AutoConfig.from_pretrained(directory)
    archs = list(getattr(config, "architectures", None) or [])
    options = {"attn_implementation": "eager"}  # plain ops: what the ONNX exporter handles best
    if any(a.endswith("ForImageClassification") for a in archs) and getattr(config, "id2label", None):
        model = transformers.AutoModelForImageClassification.from_pretrained(directory, **options)
        if isinstance(getattr(model, "classifier", None), nn.Module):
            return model.eval(), True
        log.warning("%s has no 'classifier' module: exporting its features only", archs[0])
    classes = [getattr(transformers, a, None) for a in archs if not a.endswith("ForImageClassification")]
    if getattr(config, "vision_config", None) is not None:  # CLIP and its kin: the vision tower
        prefix = type(config).__name__.removesuffix("Config")
        classes = [getattr(transformers, f"{prefix}{s}", None) for s in ("VisionModelWithProjection", "VisionModel")]
    cls = next((c for c in classes if c is not None), transformers.AutoModel)
    return cls.from_pretrained(directory, **options).eval(), False


def _graph_module(model: Any, with_logits: bool):
    """``model`` as a module of ``pixel_values`` giving (features,) or (features, logits)."""
    from torch import nn

    class PooledFeatures(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self._head_input: list[Any] = []
            if with_logits:
                model.classifier.register_forward_pre_hook(lambda _, args: self._head_input.append(args[0]))

        def forward(self, pixel_values):
            self._head_input.clear()
            out = self.model(pixel_values=pixel_values)
            if with_logits:
                return self._head_input[-1].flatten(1), out.logits
            for key in ("image_embeds", "pooler_output"):
                value = getattr(out, key, None)
                if value is not None:
                    return (value.flatten(1),)
            hidden = out.last_hidden_state
            return (hidden[:, 0] if hidden.dim() == 3 else hidden.mean(dim=(2, 3)),)

    return PooledFeatures().eval()


def export_hf_model(directory: Path, onnx_file: Path, manifest_file: Path, source: str) -> dict[str, Any]:
    """Load, export and check the model of ``directory``; write its graph and manifest; return the manifest."""
    import torch
    import transformers

    from sparkvision.models.onnx_export import export_onnx
    from sparkvision.storage import atomic_file, atomic_write

    if not (directory / "preprocessor_config.json").is_file():
        raise HFBackboneError(f"hf:{source} has no preprocessor_config.json: sparkvision takes the model's "
                              "preprocessing from its image processor (save it beside the model with save_pretrained)")
    log.info("exporting Hugging Face model %s to ONNX (once; cached at %s)", source, onnx_file)
    progress_bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            processor = transformers.AutoImageProcessor.from_pretrained(directory)
            model, with_logits = _load_model(directory)
    except HFBackboneError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unsupported or broken directory: one line
        reason = " ".join(str(exc).split())[:300]
        raise HFBackboneError(f"hf:{source}: transformers cannot load it as a vision model "
                              f"({type(exc).__name__}: {reason})") from None
    finally:
        if progress_bars:
            transformers.utils.logging.enable_progress_bar()
    preprocess = processor_preprocess(processor, f"hf:{source}")
    channels = int(getattr(model.config, "num_channels", 3) or 3)
    if channels != preprocess.channels:
        preprocess = dataclasses.replace(preprocess, channels=channels, mean=preprocess.mean[:channels],
                                         std=preprocess.std[:channels])
    graph = _graph_module(model, with_logits)
    outputs = ["features", "logits"] if with_logits else ["features"]
    height, width = preprocess.size
    with atomic_file(onnx_file) as staged:  # only a checked graph lands in the cache
        export_onnx(graph, staged, (channels, height, width), output_names=outputs)
        difference, widths = _check_export(graph, Path(staged), (channels, height, width), outputs)
        _declare_widths(Path(staged), widths)
    config = model.config
    labels = [str(config.id2label[i]) for i in range(config.num_labels)] if with_logits else None
    manifest = {
        # The keys of an ONNX sidecar (so the cached file also works as --backbone FILE.onnx) ...
        "size": list(preprocess.size), "mean": list(preprocess.mean), "std": list(preprocess.std),
        "channels": channels, "resize_mode": preprocess.resize_mode, "interpolation": preprocess.interpolation,
        "crop_pct": preprocess.crop_pct, "labels": labels, "features_output": "features",
        "logits_output": "logits" if with_logits else "features",
        # ... and where it came from.
        "preprocess": preprocess.to_dict(), "source": source, "directory": str(directory),
        "architecture": type(model).__name__, "model_type": getattr(config, "model_type", None),
        "num_features": widths["features"],
        "onnx_max_abs_diff": difference, "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    atomic_write(manifest_file, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _check_export(graph: Any, onnx_file: Path, shape: tuple[int, int, int],
                  outputs: list[str]) -> tuple[float, dict[str, int]]:
    """(largest |ONNX - torch| over the outputs on a seeded random batch, each output's width);
    beyond tolerance the export is refused."""
    import numpy as np
    import onnxruntime as ort
    import torch

    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = [t.numpy() for t in graph(x)]
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(outputs, {"input": x.numpy()})
    worst = 0.0
    for name, g, w in zip(outputs, got, want, strict=True):
        difference = float(np.abs(g - w).max()) if g.shape == w.shape else float("inf")
        worst = max(worst, difference)
        if difference > EXPORT_TOLERANCE * max(1.0, float(np.abs(w).max())):
            raise HFBackboneError(f"the ONNX export disagrees with the torch model on '{name}' "
                                  f"(max |diff| {difference:.3g}, shapes {g.shape} / {w.shape})")
    log.info("ONNX export agrees with the torch model: max |diff| %.2e", worst)
    return worst, {name: int(w.shape[1]) for name, w in zip(outputs, want, strict=True)}


def _declare_widths(onnx_file: Path, widths: dict[str, int]) -> None:
    """Write each output's width into the graph (the exporter may leave it symbolic), as
    :func:`.registry.register_onnx_model` and the featurizer read it from there."""
    import onnx

    model = onnx.load(str(onnx_file))
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[-1].dim_value = widths[output.name]
    onnx.save(model, str(onnx_file))
