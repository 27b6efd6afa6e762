"""int8 as a first-class path: quantise a model's graph, judge it against fp32, keep it only if it holds up.

The same three steps serve ``fit --int8``, ``train --int8``, ``predict --int8`` and the
``ImageFeaturizer(precision="int8")`` stage:

1. :func:`quantize_source` turns a :class:`~sparkvision.models.runner.ModelSource` into its
   static-QDQ int8 version, calibrated on preprocessed images (cached on disk by the
   graph's digest, the calibration images and the settings, so a rerun costs nothing);
2. :func:`judge` runs the fp32 and int8 classifier graphs side by side on labelled
   validation images (ONNX Runtime alone, no Spark): accuracy, top-1 agreement, speed;
3. the caller keeps int8 when the accuracy drop is within ``max_drop`` points (without
   labels: when top-1 agreement is at least ``1 - max_drop / 100``), else fp32, and records
   both figures (:class:`Int8Decision`) in the model card.

Both precisions read the same preprocessed tensors: int8 changes the model, not the
preprocessing path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparkvision.config import MeasureSettings, QuantizeSettings, TransferSettings, cache_dir
from sparkvision.deploy.measure import ImageSet, compare, measure_models
from sparkvision.models.runner import ModelSource

log = logging.getLogger(__name__)

#: What int8 may cost by default, in accuracy points on the validation images (one place: the settings).
DEFAULT_MAX_DROP = TransferSettings.int8_max_drop


def _calibration_digest(tensor: np.ndarray, settings: QuantizeSettings) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(tensor, dtype=np.float32).tobytes())
    digest.update(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    return digest.hexdigest()


def quantize_source(source: ModelSource, calibration: np.ndarray, settings: QuantizeSettings | None = None
                    ) -> ModelSource:
    """``source`` quantised to int8 (static QDQ, per-channel weights), calibrated on ``calibration``
    (float32 NCHW, already preprocessed). Outputs keep their names; the result is cached on disk."""
    from sparkvision.deploy.quantize import quantize_model

    if source.precision == "int8":
        return source
    settings = settings or QuantizeSettings()
    key = hashlib.sha256(f"{source.digest}:{_calibration_digest(calibration, settings)}".encode()).hexdigest()[:24]
    target = cache_dir() / "int8" / f"{key}.onnx"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".sv-int8-", dir=target.parent) as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            fp32.write_bytes(source.data)
            staged = quantize_model(fp32, Path(tmp) / "int8.onnx", settings, calibration)
            staged.replace(target)  # atomic: a concurrent run writes the same bytes
        log.info("quantised %s to int8 on %d calibration images (cached as %s)", source.name, len(calibration),
                 target.name)
    return dataclasses.replace(source, data=target.read_bytes(), digest="", precision="int8")


@dataclass
class Int8Decision:
    """Which precision a model keeps and the evidence: both models measured on the same images."""

    precision: str
    accepted: bool
    reason: str
    max_drop_points: float
    calibration_images: int
    val_images: int
    val_source: str
    fp32_accuracy: float | None
    int8_accuracy: float | None
    accuracy_drop_points: float | None
    top1_agreement: float | None
    fp32_images_per_second: float | None
    int8_images_per_second: float | None
    speedup: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        if self.top1_agreement is None:
            return f"fp32 kept: {self.reason}"
        if self.fp32_accuracy is not None and self.int8_accuracy is not None:
            figures = (f"val accuracy fp32 {self.fp32_accuracy:.4f}, int8 {self.int8_accuracy:.4f} "
                       f"({0.0 - (self.accuracy_drop_points or 0.0):+.2f} points)")
        else:
            figures = f"top-1 agreement {self.top1_agreement:.4f} (no labelled images)"
        return f"{self.precision} kept: {self.reason}; {figures}; model alone {self.speedup:.2f}x fp32"


def judge(fp32_graph: bytes, int8_graph: bytes, val: ImageSet, labels: list[str], calibration_images: int,
          max_drop: float = DEFAULT_MAX_DROP, measure: MeasureSettings | None = None) -> Int8Decision:
    """Measure both classifier graphs (``logits`` output) on ``val`` and decide which precision to keep."""
    if not len(val):
        raise ValueError(f"no usable validation images in {val.source} to judge the int8 model on")
    measure = measure or MeasureSettings(bench_images=64, rounds=2)
    with tempfile.TemporaryDirectory(prefix="sv-int8-judge-") as tmp:
        paths = {"fp32": Path(tmp) / "fp32.onnx", "int8": Path(tmp) / "int8.onnx"}
        paths["fp32"].write_bytes(fp32_graph)
        paths["int8"].write_bytes(int8_graph)
        measured = measure_models(paths, val, labels, measure)
    report = compare(measured["fp32"], measured["int8"], {}, val, max_drop)
    decision = Int8Decision(
        precision="int8" if report.accepted else "fp32", accepted=report.accepted, reason=report.verdict(),
        max_drop_points=max_drop, calibration_images=calibration_images, val_images=len(val),
        val_source=val.source, fp32_accuracy=measured["fp32"].accuracy, int8_accuracy=measured["int8"].accuracy,
        accuracy_drop_points=report.accuracy_drop_points, top1_agreement=round(report.top1_agreement, 6),
        fp32_images_per_second=round(measured["fp32"].images_per_second, 1),
        int8_images_per_second=round(measured["int8"].images_per_second, 1), speedup=round(report.speedup, 3),
    )
    (log.info if decision.accepted else log.warning)("int8 guard: %s", decision.summary())
    return decision


def refused(reason: str, max_drop: float) -> Int8Decision:
    """A decision to keep fp32 taken before anything could be measured."""
    return Int8Decision(precision="fp32", accepted=False, reason=reason, max_drop_points=max_drop,
                        calibration_images=0, val_images=0, val_source="", fp32_accuracy=None, int8_accuracy=None,
                        accuracy_drop_points=None, top1_agreement=None, fp32_images_per_second=None,
                        int8_images_per_second=None, speedup=None)


def quantize_model_dir(model_dir: str | Path, calibration_rows: list[tuple[str, str | None, bytes]],
                       val_rows: list[tuple[str, str | None, bytes]], max_drop: float = DEFAULT_MAX_DROP,
                       settings: QuantizeSettings | None = None) -> Int8Decision:
    """``train --int8``: a model directory's ``model.onnx`` replaced by its int8 version when the guard
    passes on ``val_rows``; the card records the verdict either way. Rows are (path, label, bytes)."""
    from sparkvision import storage
    from sparkvision.deploy.measure import to_image_set
    from sparkvision.models.model_dir import load_card, onnx_path, save_card
    from sparkvision.models.runner import from_model_dir

    card = load_card(model_dir)
    source = from_model_dir(model_dir, card)
    calibration = to_image_set(calibration_rows, source.preprocess, "calibration images")
    val = to_image_set(val_rows, source.preprocess, "validation images")
    int8 = quantize_source(source, calibration.tensor, settings)
    decision = judge(source.data, int8.data, val, list(card.labels), len(calibration), max_drop)
    if decision.accepted:
        storage.atomic_write(onnx_path(model_dir, card), int8.data)
    card.metrics = {**card.metrics, "int8": decision.to_dict()}
    card.provenance = {**card.provenance, "precision": decision.precision}
    save_card(model_dir, card)
    return decision
