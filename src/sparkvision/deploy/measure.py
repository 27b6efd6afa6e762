"""What an optimisation cost and bought, measured side by side against the model it came from.

Every optimisation (int8, pruning) is judged the same way: top-1 agreement with the
original model, task accuracy on labelled validation images, file size, and images per
second of the model alone on pre-decoded tensors (both models timed in alternating
rounds in one process, so a busy machine slows both alike). The report goes into the
optimised model's directory and on the console; :func:`check_accuracy_drop` refuses
a model that lost more accuracy than allowed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparkvision.config import MeasureSettings, PreprocessConfig
from sparkvision.models.runtime import OnnxModel
from sparkvision.progress import local_progress

log = logging.getLogger(__name__)


class AccuracyDropError(RuntimeError):
    """The optimised model lost more accuracy than allowed; nothing was written."""

    def __init__(self, report: OptimizationReport) -> None:
        super().__init__(f"{report.verdict()}; the optimised model was not written (use --force to write it anyway)")
        self.report = report


@dataclass
class ImageSet:
    """Decoded, model-ready images with their true labels (None when unlabelled)."""

    tensor: np.ndarray  # float32 (N, C, H, W)
    labels: list[str | None]
    paths: list[str]
    source: str
    #: Rows that could not be used (decode errors), by path.
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def read_image_rows(spark, src: str, limit: int, seed: int = 0, offset: int = 0) -> list[tuple[str, str | None, bytes]]:
    """``limit`` rows (path, label, content) of SRC after skipping ``offset``: :func:`sample_rows` of its images."""
    from sparkvision.io import load_images

    return sample_rows(load_images(spark, src, probe="header"), limit, seed, offset)


def sample_rows(frame, limit: int, seed: int = 0, offset: int = 0) -> list[tuple[str, str | None, bytes]]:
    """``limit`` rows (path, label, content) of an image frame without errors, after skipping ``offset``,
    in a fixed pseudo-random order (a hash of the path): a spread over every class, reproducible,
    and without sorting the whole source (Spark keeps only the top rows per partition)."""
    from pyspark.sql import functions as F

    ordered = (
        frame.where(F.col("error").isNull())
        .select("path", "label", "content")
        .withColumn("_order", F.xxhash64(F.col("path"), F.lit(seed)))
        .orderBy("_order", "path")
        .limit(offset + limit)
    )
    rows = ordered.collect()[offset:]
    return [(r["path"], r["label"], bytes(r["content"])) for r in rows]


def to_image_set(rows: list[tuple[str, str | None, bytes]], preprocess: PreprocessConfig, source: str) -> ImageSet:
    """Rows through the model's :class:`ImagePreprocessor` (the one bytes-to-tensor path)."""
    from sparkvision.preprocess import ImagePreprocessor

    batch = ImagePreprocessor(preprocess)([content for _, _, content in rows])
    keep = [int(i) for i in batch.index]
    skipped = {rows[i][0]: err for i, err in enumerate(batch.errors) if err is not None}
    if skipped:
        log.warning("%d images of %s could not be decoded and are left out", len(skipped), source)
    return ImageSet(batch.tensor, [rows[i][1] for i in keep], [rows[i][0] for i in keep], source, skipped)


def read_image_set(spark, src: str, preprocess: PreprocessConfig, limit: int, seed: int = 0,
                   offset: int = 0) -> ImageSet:
    return to_image_set(read_image_rows(spark, src, limit, seed, offset), preprocess, src)


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", " ")


def label_indices(labels: list[str | None], classes: list[str]) -> np.ndarray:
    """Index of each true label in the model's classes; -1 when unlabelled or unknown.

    Names match ignoring case and ``_`` vs space, whole or by their first comma-separated
    synonym, so folder names such as ``english_springer`` meet ImageNet's
    ``English springer, English springer spaniel``.
    """
    lookup = {_normalise(c): i for i, c in enumerate(classes)}
    for i, c in enumerate(classes):
        lookup.setdefault(_normalise(c.split(",", 1)[0]), i)
    return np.asarray([lookup.get(_normalise(lab), -1) if lab else -1 for lab in labels], dtype=np.int64)


@dataclass
class Measurement:
    """One model on one image set."""

    path: str
    size_bytes: int
    images_per_second: float
    accuracy: float | None
    labelled: int
    top1: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("top1")
        data["size_mb"] = round(self.size_bytes / 1e6, 3)
        return data


def _session(path: Path, threads: int | None) -> OnnxModel:
    return OnnxModel(Path(path), threads=threads or os.cpu_count() or 1)


def predict_top1(model: OnnxModel, tensor: np.ndarray, batch_size: int) -> np.ndarray:
    logits = model.run_batched(tensor, "logits", batch_size)
    return logits.argmax(axis=1)


def measure_models(paths: dict[str, Path], images: ImageSet, classes: list[str],
                   settings: MeasureSettings | None = None) -> dict[str, Measurement]:
    """Accuracy, top-1 predictions, size and throughput of each ONNX model in ``paths``.

    Throughput is timed on up to ``bench_images`` of the images (repeated when there are
    fewer), ``rounds`` times, models alternating within each round; the best round counts.
    """
    settings = settings or MeasureSettings()
    if not len(images):
        raise ValueError(f"no usable images in {images.source} to measure on")
    sessions = {name: _session(path, settings.threads) for name, path in paths.items()}
    truth = label_indices(images.labels, classes)
    labelled = truth >= 0
    top1 = {name: predict_top1(model, images.tensor, settings.batch_size)
            for name, model in local_progress(sessions.items(), "accuracy", total=len(sessions), unit="model")}
    reps = -(-settings.bench_images // len(images))
    bench = np.concatenate([images.tensor] * reps)[: settings.bench_images] if reps > 1 else \
        images.tensor[: settings.bench_images]
    best = {name: float("inf") for name in sessions}
    timings = [(r, name) for r in range(max(1, settings.rounds)) for name in sessions]
    for _, name in local_progress(timings, "timing", unit="run"):
        start = time.perf_counter()
        sessions[name].run_batched(bench, "logits", settings.batch_size)
        best[name] = min(best[name], time.perf_counter() - start)
    out = {}
    for name, path in paths.items():
        accuracy = float((top1[name][labelled] == truth[labelled]).mean()) if labelled.any() else None
        out[name] = Measurement(
            path=str(path), size_bytes=Path(path).stat().st_size, images_per_second=len(bench) / best[name],
            accuracy=accuracy, labelled=int(labelled.sum()), top1=top1[name],
        )
    return out


@dataclass
class OptimizationReport:
    """The measurement JSON written next to an optimised model (``optimization.json``)."""

    optimization: dict[str, Any]
    baseline: dict[str, Any]
    optimized: dict[str, Any]
    eval_source: str
    eval_images: int
    top1_agreement: float
    accuracy_drop_points: float | None
    speedup: float
    size_ratio: float
    max_accuracy_drop: float
    accepted: bool
    forced: bool = False
    measured_on: str = "pre-decoded tensors, ONNX Runtime alone (decode excluded)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def verdict(self) -> str:
        """Why the optimised model is accepted or refused, with the figures that decided it."""
        if self.accuracy_drop_points is not None:
            return (f"accuracy changed {0.0 - self.accuracy_drop_points:+.2f} points ({self.baseline['accuracy']:.4f} "
                    f"-> {self.optimized['accuracy']:.4f}), {'within' if self.accepted else 'beyond'} the allowed "
                    f"-{self.max_accuracy_drop:.2f}")
        return (f"no labelled validation images; top-1 agreement with the original model "
                f"{self.top1_agreement:.4f} {'>=' if self.accepted else '<'} 1 - {self.max_accuracy_drop:.2f}/100")

    def summary(self) -> str:
        acc = self.optimized.get("accuracy")
        base = self.baseline.get("accuracy")
        accuracy = (f"accuracy {base:.4f} -> {acc:.4f} ({-self.accuracy_drop_points:+.2f} points), "
                    if acc is not None and base is not None else "no labelled images: accuracy not measured, ")
        return (f"{accuracy}top-1 agreement {self.top1_agreement:.4f} on {self.eval_images} images; "
                f"{self.baseline['images_per_second']:.1f} -> {self.optimized['images_per_second']:.1f} images/s "
                f"({self.speedup:.2f}x); size {self.baseline['size_mb']:.2f} -> {self.optimized['size_mb']:.2f} MB")


def compare(baseline: Measurement, optimized: Measurement, optimization: dict[str, Any], images: ImageSet,
            max_accuracy_drop: float, forced: bool = False) -> OptimizationReport:
    drop = None
    if baseline.accuracy is not None and optimized.accuracy is not None:
        drop = round(100.0 * (baseline.accuracy - optimized.accuracy), 4)
    agreement = float((baseline.top1 == optimized.top1).mean())
    if drop is not None:
        accepted = drop <= max_accuracy_drop
    else:  # nothing to score accuracy against: judge by agreement with the original instead
        accepted = agreement >= 1.0 - max_accuracy_drop / 100.0
    return OptimizationReport(
        optimization=optimization, baseline=baseline.to_dict(), optimized=optimized.to_dict(),
        eval_source=images.source, eval_images=len(images),
        top1_agreement=agreement,
        accuracy_drop_points=drop, speedup=optimized.images_per_second / baseline.images_per_second,
        size_ratio=optimized.size_bytes / baseline.size_bytes, max_accuracy_drop=max_accuracy_drop,
        accepted=accepted, forced=forced and not accepted,
    )


def check_accuracy_drop(report: OptimizationReport, force: bool = False) -> None:
    """Raise :class:`AccuracyDropError` unless the optimised model is within bounds or forced.

    Without labelled images accuracy cannot be judged; the bound then applies to top-1
    agreement with the original model (at least ``1 - max_accuracy_drop / 100``).
    """
    if not report.accepted and not force:
        raise AccuracyDropError(report)
