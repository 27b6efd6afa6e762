"""The Spark side of drift monitoring: snapshots aggregated where the rows are.

* :func:`prediction_counts`: classes, confidence bins and errors of a predictions frame,
  one ``groupBy`` whose few result rows reach the driver.
* :func:`image_counts` and :func:`feature_moments`: sizes, modes and the pooled-feature
  mean and variance (MLlib's ``Summarizer``) of image rows.
* :func:`profile_frame` snapshots a frame the model has scored (``fit``'s validation
  predictions); :func:`build_profile` scores a source with a model directory first
  (``train``'s); :func:`observe` snapshots a predictions set or its latest window,
  re-reading a bounded, seeded sample of its images through the model's own featurizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkvision.drift.stats import (
    BYTES_EDGES,
    CONFIDENCE_EDGES,
    SIZE_EDGES,
    Profile,
    Signal,
    Snapshot,
    Thresholds,
    compare,
    load_profile,
    save_profile,
)
from sparkvision.io.schema import CONTENT, ERROR, HEIGHT, IMAGE_SCHEMA, MODE, PATH, WIDTH
from sparkvision.session import default_parallelism

log = logging.getLogger(__name__)

FEATURES = "features"
BYTES = "bytes"
PREDICTED_AT = "predicted_at"


def bin_column(value: Column, edges: Sequence[float]) -> Column:
    """The bin of :func:`sparkvision.drift.stats.bin_index` as a Spark expression (null stays null)."""
    inner = [F.when(value >= F.lit(float(e)), 1).otherwise(0) for e in edges[1:-1]]
    total = inner[0]
    for term in inner[1:]:
        total = total + term
    return F.when(value.isNotNull(), total)


def _histogram(counts: dict[int, int], edges: Sequence[float]) -> list[int]:
    return [int(counts.get(i, 0)) for i in range(len(edges) - 1)]


def prediction_counts(predictions: DataFrame, labels: Sequence[str]) -> dict[str, Any]:
    """Rows, error rows, predicted rows per class and per confidence bin: one small ``groupBy``."""
    failed = F.col(ERROR).isNotNull() | F.col("prediction").isNull() | F.col("probability").isNull()
    confidence = F.when(~failed, F.array_max("probability"))
    groups = predictions.groupBy(
        failed.alias("failed"), F.when(~failed, F.col("prediction")).alias("prediction"),
        bin_column(confidence, CONFIDENCE_EDGES).alias("bin"),
    ).count().collect()
    classes = dict.fromkeys(labels, 0)
    bins: dict[int, int] = {}
    rows = errors = 0
    for g in groups:
        n = int(g["count"])
        rows += n
        if g["failed"]:
            errors += n
            continue
        classes[g["prediction"]] = classes.get(g["prediction"], 0) + n
        bins[int(g["bin"])] = bins.get(int(g["bin"]), 0) + n
    return {"rows": rows, "error_rows": errors, "class_counts": classes,
            "confidence": _histogram(bins, CONFIDENCE_EDGES)}


def image_counts(images: DataFrame) -> dict[str, Any]:
    """Width, height and encoded-size bins and modes of image rows (``bytes`` or ``content`` for the size)."""
    size = F.col(BYTES) if BYTES in images.columns else F.length(CONTENT)
    ok = F.col(ERROR).isNull() & F.col(WIDTH).isNotNull()
    groups = images.groupBy(
        ok.alias("ok"), F.when(ok, bin_column(F.col(WIDTH), SIZE_EDGES)).alias("w"),
        F.when(ok, bin_column(F.col(HEIGHT), SIZE_EDGES)).alias("h"),
        F.when(ok, bin_column(size, BYTES_EDGES)).alias("b"), F.when(ok, F.col(MODE)).alias("mode"),
    ).count().collect()
    width: dict[int, int] = {}
    height: dict[int, int] = {}
    sizes: dict[int, int] = {}
    modes: dict[str, int] = {}
    read = failed = 0
    for g in groups:
        n = int(g["count"])
        if not g["ok"]:
            failed += n
            continue
        read += n
        for counts, key in ((width, g["w"]), (height, g["h"]), (sizes, g["b"])):
            counts[int(key)] = counts.get(int(key), 0) + n
        modes[str(g["mode"])] = modes.get(str(g["mode"]), 0) + n
    return {"image_rows": read, "image_errors": failed, "width": _histogram(width, SIZE_EDGES),
            "height": _histogram(height, SIZE_EDGES), "bytes": _histogram(sizes, BYTES_EDGES),
            "modes": dict(sorted(modes.items()))}


def feature_moments(frame: DataFrame, column: str = FEATURES) -> dict[str, Any]:
    """Rows, per-dimension mean and (unbiased) variance of a vector column's non-null rows, by MLlib's Summarizer."""
    from pyspark.ml.stat import Summarizer

    rows = frame.where(F.col(column).isNotNull())
    found = rows.select(Summarizer.metrics("count", "mean", "variance").summary(F.col(column)).alias("s")).first()
    summary = found["s"] if found is not None else None
    if summary is None or not summary["count"]:
        return {"feature_rows": 0, "feature_mean": [], "feature_var": []}
    return {"feature_rows": int(summary["count"]), "feature_mean": summary["mean"].toArray().tolist(),
            "feature_var": np.nan_to_num(summary["variance"].toArray()).tolist()}


# --------------------------------------------------------------------------- the model's features


def feature_role(model: Any) -> str:
    """The output a model directory's drift profile sketches: pooled ``features``, else ``logits``
    (``train`` exports logits only)."""
    if model.card.kind == "spark_pipeline":
        return "features"
    from sparkvision.models.runner import from_model_dir

    return "features" if "features" in from_model_dir(model.model_dir, model.card).outputs else "logits"


def with_features(model: Any, frame: DataFrame) -> DataFrame:
    """``frame`` (image rows) with the model's :data:`FEATURES` vector, through its own featurizer:
    the fitted pipeline's ``ImageFeaturizer`` stage, or the model directory's ONNX graph with the
    card's preprocessing. Rows that fail get a null vector and their error."""
    from sparkvision.ml.featurizer import ImageFeaturizer, to_vector

    if model.card.kind == "spark_pipeline":
        stage = model.transformer.stages[0]
        if not isinstance(stage, ImageFeaturizer):
            raise ValueError(f"{model.model_dir}: the pipeline does not start with an ImageFeaturizer")
        out = stage.transform(frame)
        return out if stage.getOutputCol() == FEATURES else out.withColumnRenamed(stage.getOutputCol(), FEATURES)
    from sparkvision.config import FeaturizeSettings
    from sparkvision.ml.onnx_stage import RawOutput, run_model
    from sparkvision.models.runner import from_model_dir
    from sparkvision.session import task_cpus

    return run_model(frame, from_model_dir(model.model_dir, model.card), CONTENT, ERROR,
                     mapper=RawOutput("values", role=feature_role(model)), columns={"values": (FEATURES, to_vector)},
                     batch_size=FeaturizeSettings.batch_size, threads=task_cpus(frame.sparkSession), tta=model.card.tta)


def _profile_columns(frame: DataFrame) -> DataFrame:
    """What a snapshot reads of a scored image frame: no bytes, only their count."""
    wanted = [F.col(c) for c in ("prediction", "probability", ERROR, WIDTH, HEIGHT, MODE, FEATURES, BYTES)
              if c in frame.columns]
    if BYTES not in frame.columns and CONTENT in frame.columns:
        wanted.append(F.length(CONTENT).alias(BYTES))
    return frame.select(*wanted)


def profile_frame(scored: DataFrame, labels: Sequence[str], role: str, source: str) -> Profile:
    """The profile of image rows the model has scored (``prediction``, ``probability``, ``error``,
    the image columns and its :data:`FEATURES`): three aggregations over one cached projection."""
    kept = _profile_columns(scored)
    owned = not scored.is_cached  # a cached frame (fit's validation predictions) is read as it is
    if owned:
        kept = kept.persist()
    try:
        images = image_counts(kept) if {WIDTH, HEIGHT, MODE, BYTES} <= set(kept.columns) else {}
        features = {"feature_role": role, **feature_moments(kept)} if FEATURES in kept.columns else {}
        snapshot = Snapshot(**prediction_counts(kept, labels), **images, **features)
    finally:
        if owned:
            kept.unpersist()
    log.info("drift profile: %d reference rows (%d with errors), features of %d", snapshot.rows,
             snapshot.error_rows, snapshot.feature_rows)
    return Profile(labels=list(labels), reference=snapshot, source=source,
                   created=datetime.now(UTC).isoformat(timespec="seconds"))


def build_profile(spark: SparkSession, model_dir: str | Path, frame: DataFrame, source: str) -> Path:
    """Score ``frame`` (image rows, e.g. the validation split) with the model directory and save its
    profile there; returns the profile's path."""
    from sparkvision.inference.predict import load_model
    from sparkvision.io.image_source import as_model_frame

    model = load_model(model_dir)
    if model.is_detector:
        raise ValueError(f"{model_dir} is a detector: drift profiles are for classifiers")
    scored = with_features(model, model.transform(as_model_frame(frame)))
    profile = profile_frame(scored, model.labels, feature_role(model), source)
    return save_profile(model.model_dir, profile)


# --------------------------------------------------------------------------- a window of predictions


def latest_window(predictions: DataFrame, window: timedelta | None) -> tuple[DataFrame, dict[str, Any]]:
    """The rows of the last ``window`` before the newest ``predicted_at``; every row without a window,
    or when the set has no ``predicted_at`` (predictions written before it existed)."""
    if window is None:
        return predictions, {"seconds": None}
    if PREDICTED_AT not in predictions.columns:
        log.warning("the predictions have no %s column: --window is ignored, every row is judged", PREDICTED_AT)
        return predictions, {"seconds": None, "note": f"no {PREDICTED_AT} column: --window ignored, every row judged"}
    newest = predictions.agg(F.max(PREDICTED_AT)).first()[0]
    if newest is None:
        return predictions, {"seconds": None, "note": f"{PREDICTED_AT} is null on every row: every row judged"}
    start = newest - window
    chosen = predictions.where(F.col(PREDICTED_AT) > F.lit(start))
    return chosen, {"seconds": window.total_seconds(), "start": start.isoformat(), "end": newest.isoformat()}


def _read_batches(batches, max_bytes: int):
    """Path batches to IMAGE_SCHEMA rows: each file's bytes (any URI storage reads), its header probed."""
    from sparkvision import storage
    from sparkvision.config import DecodeSettings
    from sparkvision.io.errors import ErrorKind, ImageError
    from sparkvision.io.sources import describe_rows

    for batch in batches:
        paths = list(batch[PATH])
        contents: list[bytes | None] = []
        errors: list[str | None] = []
        for path in paths:
            try:
                contents.append(storage.read_bytes(path, None, max_bytes))
                errors.append(None)
            except storage.FileTooLargeError as exc:
                contents.append(None)
                errors.append(ImageError(ErrorKind.TOO_LARGE, str(exc)).message)
            except (OSError, ValueError) as exc:  # vanished, unreadable, or a URI no filesystem here knows
                contents.append(None)
                errors.append(ImageError(ErrorKind.UNREADABLE, f"cannot read {path} ({exc})").message)
        yield describe_rows(paths, [None] * len(paths), contents, errors, DecodeSettings(), "header")


def reread_images(paths: DataFrame) -> DataFrame:
    """The image files named by a frame's ``path`` column as IMAGE_SCHEMA rows, read on the executors;
    a file that cannot be read is a row with its error."""
    from functools import partial

    from sparkvision.config import IngestSettings

    reader = partial(_read_batches, max_bytes=IngestSettings().max_file_bytes)
    parts = max(1, default_parallelism(paths.sparkSession))
    return paths.select(PATH).repartition(parts).mapInPandas(reader, IMAGE_SCHEMA)


def sample_paths(predictions: DataFrame, sample: int, seed: int) -> DataFrame:
    """Up to ``sample`` paths of rows without an error, the same ones on every run (a seeded hash order)."""
    return (predictions.where(F.col(ERROR).isNull()).select(PATH).distinct()
            .orderBy(F.xxhash64(F.col(PATH), F.lit(seed))).limit(sample))


def observe(model: Any, predictions: DataFrame, sample: int, seed: int = 0) -> Snapshot:
    """The snapshot of a predictions frame: prediction signals over every row; image and feature
    signals over up to ``sample`` of its images, re-read and run through the model's featurizer."""
    counts = prediction_counts(predictions, model.labels)
    images: dict[str, Any] = {}
    features: dict[str, Any] = {}
    if sample > 0:
        scored = with_features(model, reread_images(sample_paths(predictions, sample, seed)))
        kept = _profile_columns(scored).persist()
        try:
            images = image_counts(kept)
            features = {"feature_role": feature_role(model), **feature_moments(kept)}
        finally:
            kept.unpersist()
    return Snapshot(**counts, **images, **features)


@dataclass
class DriftReport:
    """``sparkvision drift``'s result: every signal against the profile, and whether any drifted."""

    model: str
    predictions: str
    window: dict[str, Any]
    rows: int
    sampled_images: int
    reference_rows: int
    reference_source: str
    signals: list[Signal]
    thresholds: Thresholds
    notes: list[str] = field(default_factory=list)

    @property
    def drift(self) -> bool:
        return any(s.drifted for s in self.signals)

    @property
    def drifted(self) -> list[str]:
        return [s.name for s in self.signals if s.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {"drift": self.drift, "drifted": self.drifted, "model": self.model, "predictions": self.predictions,
                "window": self.window, "rows": self.rows, "sampled_images": self.sampled_images,
                "reference": {"rows": self.reference_rows, "source": self.reference_source},
                "thresholds": asdict(self.thresholds), "signals": [s.to_dict() for s in self.signals],
                "notes": self.notes}


#: Below this many predicted rows (or images) a PSI is mostly sampling noise.
FEW_ROWS = 100


def check_drift(spark: SparkSession, model_dir: str | Path, predictions: str, window: timedelta | None = None,
                sample: int = 1000, seed: int = 0, thresholds: Thresholds | None = None) -> DriftReport:
    """Judge a predictions set (or its latest ``window`` by ``predicted_at``) against the model's profile.

    Prediction signals come from every row of the window; image and feature signals from up
    to ``sample`` of its images (``0``: none), re-read by path and run through the model's
    own featurizer.
    """
    from sparkvision.inference.predict import load_model

    thresholds = thresholds or Thresholds()
    model = load_model(model_dir)
    if model.is_detector:
        raise ValueError(f"{model_dir} is a detector: drift is not supported for detectors yet")
    profile = load_profile(model.model_dir)
    if list(profile.labels) != model.labels:
        raise ValueError(f"the drift profile's labels {profile.labels} are not the model's {model.labels}")
    frame = spark.read.parquet(predictions)
    missing = [c for c in (PATH, "prediction", "probability", ERROR) if c not in frame.columns]
    if missing:
        raise ValueError(f"{predictions} is not a classifier's predictions set: no column(s) {missing}")
    chosen, described = latest_window(frame, window)
    chosen = chosen.select(PATH, "prediction", "probability", ERROR).persist()
    try:
        current = observe(model, chosen, sample, seed)
    finally:
        chosen.unpersist()
    signals = compare(profile, current, thresholds)
    notes = [described.pop("note")] if "note" in described else []
    if current.predicted_rows < FEW_ROWS:
        notes.append(f"only {current.predicted_rows} predicted rows: PSI at this size is mostly sampling noise")
    if sample and current.image_rows < min(sample, FEW_ROWS):
        notes.append(f"only {current.image_rows} images could be read for the image and feature signals")
    if current.image_errors:
        notes.append(f"{current.image_errors} sampled images could not be read again (moved or deleted?)")
    return DriftReport(model=str(model.model_dir), predictions=predictions, window=described, rows=current.rows,
                       sampled_images=current.image_rows + current.image_errors,
                       reference_rows=profile.reference.rows, reference_source=profile.source, signals=signals,
                       thresholds=thresholds, notes=notes)
