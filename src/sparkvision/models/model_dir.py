"""The sparkvision model directory: everything needed to use a trained model, in one folder.

::

    MODEL_DIR/
      sparkvision_model.json   the model card below (always)
      labels.txt               class names, one per line, in probability order (always)
      model.onnx               input "input" float32 NCHW (dynamic batch), output "logits" (N, classes)
      spark_pipeline/          a fitted Spark PipelineModel (kind "spark_pipeline")
      metrics.json             validation metrics (optional)
      curves.csv, tensorboard/ training curves (models made by ``sparkvision train``)
      checkpoints/             training checkpoints (``--resume``)

``kind`` says how batch prediction runs it: ``onnx`` through ONNX Runtime in a Spark
stage, ``spark_pipeline`` through the saved PipelineModel (featurizer + MLlib). Any
kind may also carry ``model.onnx`` so it can be served without Spark. The card's
``preprocess`` is the model's one preprocessing truth, and ``labels`` fixes the order
of every ``probability`` vector the model produces.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sparkvision import __version__
from sparkvision.config import PreprocessConfig
from sparkvision.storage import atomic_write

CARD_FILE = "sparkvision_model.json"
LABELS_FILE = "labels.txt"
ONNX_FILE = "model.onnx"
SPARK_PIPELINE_DIR = "spark_pipeline"
METRICS_FILE = "metrics.json"
FORMAT_VERSION = 1

ModelKind = Literal["onnx", "spark_pipeline", "detector"]


class ModelCardError(ValueError):
    """A model directory's card cannot be read: not JSON, or not a sparkvision model card."""


@dataclass
class ModelCard:
    name: str
    kind: ModelKind
    labels: list[str]
    preprocess: PreprocessConfig
    architecture: str = ""
    onnx: str | None = ONNX_FILE
    spark_pipeline: str | None = None
    #: Test-time augmentation the model was fitted and validated with ("none" or "flip");
    #: runners on this directory use it unless told otherwise.
    tta: str = "none"
    #: What the model was made from: data source, parameters, seed, parent model.
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    sparkvision_version: str = __version__
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        data = dict(data)
        if data.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(
                f"model format {data['format_version']} is newer than this sparkvision understands ({FORMAT_VERSION})"
            )
        data["preprocess"] = PreprocessConfig.from_dict(data["preprocess"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / CARD_FILE).is_file()


def save_card(model_dir: str | Path, card: ModelCard) -> Path:
    """Write the card and labels (atomically each), creating the directory."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(model_dir / LABELS_FILE, "\n".join(card.labels) + "\n")
    atomic_write(model_dir / CARD_FILE, json.dumps(card.to_dict(), indent=2) + "\n")
    if card.metrics:
        atomic_write(model_dir / METRICS_FILE, json.dumps(card.metrics, indent=2) + "\n")
    return model_dir


def load_card(model_dir: str | Path) -> ModelCard:
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a sparkvision model directory (no {CARD_FILE})")
    try:
        return ModelCard.from_dict(json.loads(path.read_text("utf-8")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ModelCardError(f"{path} is not a valid model card: {detail}") from exc


def onnx_path(model_dir: str | Path, card: ModelCard | None = None) -> Path:
    card = card or load_card(model_dir)
    if not card.onnx:
        raise FileNotFoundError(f"model {model_dir} has no ONNX graph")
    path = Path(model_dir) / card.onnx
    if not path.is_file():
        raise FileNotFoundError(f"model {model_dir} names {card.onnx} but the file is missing")
    return path


#: Card fields that change what a model predicts; the rest (metrics, provenance, dates) do not.
_PREDICTIVE_CARD_FIELDS = ("kind", "labels", "preprocess", "architecture", "onnx", "spark_pipeline", "tta")


def model_digest(model_dir: str | Path) -> str:
    """A short content digest of what a model directory predicts with: its ``model_version``.

    Covers the card's predictive fields, ``model.onnx`` and the Spark pipeline's files, so
    two directories that predict alike share it and retraining changes it. Metrics,
    checkpoints, curves and reports do not count.
    """
    model_dir = Path(model_dir)
    card = load_card(model_dir)
    digest = hashlib.sha256()
    fields = {name: value for name, value in card.to_dict().items() if name in _PREDICTIVE_CARD_FIELDS}
    digest.update(json.dumps(fields, sort_keys=True).encode("utf-8"))
    files: list[Path] = []
    if card.onnx and (model_dir / card.onnx).is_file():
        files.append(model_dir / card.onnx)
    if card.spark_pipeline and (model_dir / card.spark_pipeline).is_dir():
        files.extend(sorted(p for p in (model_dir / card.spark_pipeline).rglob("*")
                            if p.is_file() and not p.name.startswith((".", "_"))))
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
