"""Batch prediction with any sparkvision model directory: the daily job.

:func:`load_model` turns a model directory into a Spark ``Transformer`` that adds the
predictions columns, whatever made the model:

* kind ``spark_pipeline`` (``sparkvision fit``): the saved PipelineModel (featurizer +
  MLlib classifier), whose last stage writes ``prediction`` and ``probability``;
* kind ``onnx`` (``sparkvision train``, ``optimize``, exports): ``model.onnx`` run by
  :class:`~sparkvision.ml.predictor.ImagePredictor` with the card's labels and
  preprocessing.

:func:`predict` writes the predictions contract as Parquet, atomically:

=============  ==============  ====================================================
column         type            meaning
=============  ==============  ====================================================
path           string          the input row's path
label          string          the true class when the source has one, else null
prediction     string          the most probable class; null when ``error`` is set
probability    array<double>   one value per class in the model card's ``labels``
                               order (``labels.txt``); null when ``error`` is set
error          string          null, or ``"<kind>: <detail>"`` (from ingest or model)
model_version  string          the model directory's digest
                               (:func:`~sparkvision.models.model_dir.model_digest`)
predicted_at   timestamp       when the row was predicted (the job's start, UTC)
=============  ==============  ====================================================

A detector model directory (card kind ``detector``, from ``sparkvision train --task
detect``) runs through :class:`~sparkvision.ml.detector.ObjectDetector` instead, and the
contract's ``prediction``/``probability`` are replaced by ``boxes``:
``array<struct<label, score, xmin, ymin, xmax, ymax>>`` in pixels of the original image.

Every input row appears exactly once; this is checked (row count and per-path
multiplicity) on the written files before they are moved into place.

Appended outputs (``predict --incremental`` here, ``predict --stream`` in
:mod:`sparkvision.inference.stream`) are a Parquet table of parts ``OUT/batch=N/``, each
added in one rename, with one more column, ``source_key``: what identifies the input
file's version (``<size>:<mtime ms>``, or ``sha256:<hex>`` of its bytes).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pyspark.ml import PipelineModel, Transformer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType

from sparkvision import storage
from sparkvision.config import IngestSettings
from sparkvision.detection.postprocess import DecodeSettings
from sparkvision.io.image_source import as_model_frame
from sparkvision.io.schema import CONTENT, ERROR, LABEL, PATH
from sparkvision.models.model_dir import ModelCard, load_card, model_digest
from sparkvision.progress import spark_progress

log = logging.getLogger(__name__)

PREDICTIONS_SCHEMA = StructType([
    StructField(PATH, StringType(), False),
    StructField(LABEL, StringType(), True),
    StructField("prediction", StringType(), True),
    StructField("probability", ArrayType(DoubleType(), True), True),
    StructField(ERROR, StringType(), True),
])
PREDICTION_COLUMNS = [f.name for f in PREDICTIONS_SCHEMA.fields]
#: Lineage, on every written row: which model predicted it, and when.
MODEL_VERSION, PREDICTED_AT = "model_version", "predicted_at"
#: Appended outputs only: the input file's version (see the module docstring), and the part.
SOURCE_KEY, BATCH = "source_key", "batch"


def _detections_schema() -> StructType:
    from sparkvision.ml.detector import BOXES_TYPE

    return StructType([
        StructField(PATH, StringType(), False),
        StructField(LABEL, StringType(), True),
        StructField("boxes", BOXES_TYPE, True),
        StructField(ERROR, StringType(), True),
    ])
#: Written next to the Parquet parts; ``labels`` in it is the ``probability`` order. Not the
#: dataset marker (``io.dataset.MARKER``): a predictions directory is not an image dataset.
PREDICTIONS_MARKER = "_sparkvision_predictions.json"


class PredictionCheckError(RuntimeError):
    """The written predictions do not hold every input row exactly once."""


class AppendedOutputError(ValueError):
    """An output directory cannot take appended parts (another layout, or another kind of model)."""


@dataclass
class LoadedModel:
    """A model directory's card and the Spark Transformer that adds the predictions columns."""

    model_dir: Path
    card: ModelCard
    transformer: Transformer

    @property
    def labels(self) -> list[str]:
        return list(self.card.labels)

    @property
    def is_detector(self) -> bool:
        return self.card.kind == "detector"

    @property
    def schema(self) -> StructType:
        """The written contract: classification predictions, or boxes for a detector."""
        return _detections_schema() if self.is_detector else PREDICTIONS_SCHEMA

    def transform(self, frame: DataFrame) -> DataFrame:
        """The model's columns added; a frame of ``spark.read.format("image")`` is read through its struct."""
        return self.transformer.transform(as_model_frame(frame))

    @property
    def version(self) -> str:
        """The ``model_version`` written on every row (computed once)."""
        if not hasattr(self, "_version"):
            self._version = model_digest(self.model_dir)
        return self._version

    def to_int8(self, frame: DataFrame, max_drop: float, seed: int = 0) -> Any:
        """Run this classifier int8 (``predict --int8``) if the guard passes on a sample of ``frame``.

        A sample of the rows calibrates the graph and other rows judge it against fp32 (accuracy where
        they carry labels, else top-1 agreement): see :mod:`sparkvision.deploy.int8`. Graph and verdict
        are cached by model digest, so later runs of the same model skip both. Returns the
        :class:`~sparkvision.deploy.int8.Int8Decision`; a refused int8 leaves the model fp32.
        """
        from sparkvision.config import MeasureSettings, QuantizeSettings, cache_dir
        from sparkvision.deploy.int8 import Int8Decision, judge
        from sparkvision.deploy.measure import sample_rows, to_image_set

        if self.is_detector:
            raise ValueError(f"{self.model_dir} is a detector; int8 on the fly is for classifiers")
        stage, fp32_graph = self._int8_stage()
        if stage.getPrecision() == "int8":
            return None  # fitted with --int8: already quantised and judged (its card holds the figures)
        cached = cache_dir() / "int8" / f"model-{self.version}-{max_drop:g}"
        decision_file, graph_file = cached.with_suffix(".json"), cached.with_suffix(".onnx")
        if decision_file.exists():
            decision = Int8Decision(**json.loads(decision_file.read_text(encoding="utf-8")))
            if decision.accepted:
                stage._embedded = replace(stage._fp32_source(), data=graph_file.read_bytes(), digest="",
                                          precision="int8")
                stage._set(precision="int8")
            log.info("int8 verdict for this model cached in %s: %s", decision_file, decision.summary())
        else:
            quantize, measure = QuantizeSettings(seed=seed), MeasureSettings()
            rows = sample_rows(frame, quantize.calibration_images + measure.val_images, seed)
            n_cal = min(quantize.calibration_images, max(1, len(rows) // 2))
            stage.calibrate([content for _, _, content in rows[:n_cal]], settings=quantize)
            val = to_image_set(rows[n_cal:], stage.model_source().preprocess, "input rows after the calibration ones")
            decision = judge(fp32_graph, self._int8_stage()[1], val, self.labels, stage.calibration_images, max_drop)
            graph = stage.model_source().data
            if not decision.accepted:
                stage._embedded = None
                stage._set(precision="fp32")
            cached.parent.mkdir(parents=True, exist_ok=True)
            storage.atomic_write(graph_file, graph)
            storage.atomic_write(decision_file, json.dumps(decision.to_dict(), indent=2).encode())
        if decision.accepted:
            self._version = f"{self.version}-int8"
        return decision

    def _int8_stage(self) -> tuple[Any, bytes]:
        """The stage whose graph int8 replaces, and the classifier graph it makes (fp32 until calibrated)."""
        if self.card.kind == "onnx":
            return self.transformer, self.transformer.model_source().data
        from sparkvision.deploy.export import append_head, pipeline_parts
        from sparkvision.ml.featurizer import ImageFeaturizer

        stage = next(s for s in self.transformer.stages if isinstance(s, ImageFeaturizer))
        parts = pipeline_parts(self.transformer)
        return stage, append_head(stage.model_source().data, parts.feature_output, parts.head).SerializeToString()

    def predictions(self, frame: DataFrame, keep: tuple[str, ...] = ()) -> DataFrame:
        """Only the contract's columns (``label`` null when ``frame`` has none), and ``keep``."""
        frame = as_model_frame(frame)
        if LABEL not in frame.columns:
            frame = frame.withColumn(LABEL, F.lit(None).cast(StringType()))
        out = self.transform(frame)
        return out.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in self.schema.fields], *keep)

    def written(self, frame: DataFrame, keep: tuple[str, ...] = ()) -> DataFrame:
        """:meth:`predictions` with the lineage columns every written row carries."""
        return self.predictions(frame, keep).withColumn(MODEL_VERSION, F.lit(self.version)) \
            .withColumn(PREDICTED_AT, F.current_timestamp())

    def marker(self, **extra: Any) -> str:
        """The JSON written next to the predictions (see :data:`PREDICTIONS_MARKER`)."""
        return json.dumps({"model": str(self.model_dir), "kind": self.card.kind, "labels": self.labels,
                           MODEL_VERSION: self.version, **extra}, indent=2)


def load_model(model_dir: str | Path, batch_size: int | None = None, detection: DecodeSettings | None = None,
               tta: str | None = None) -> LoadedModel:
    """Any sparkvision model directory as a Transformer producing ``prediction``/``probability``/``error``
    (or, for a detector, ``boxes``/``error`` with ``detection``'s thresholds). A classifier's ``tta``
    defaults to what its card records (what it was fitted with)."""
    model_dir = Path(storage.local_path(model_dir)).resolve()
    card = load_card(model_dir)
    if tta is not None and tta != "none" and card.kind == "detector":
        raise ValueError(f"{model_dir} is a detector; test-time augmentation (--tta) applies to classifiers")
    if card.kind == "spark_pipeline":
        if not card.spark_pipeline:
            raise ValueError(f"{model_dir}: kind spark_pipeline but the card names no pipeline directory")
        pipeline = PipelineModel.load(str(model_dir / card.spark_pipeline))
        for stage in pipeline.stages:
            if batch_size and stage.hasParam("batchSize"):
                stage.set(stage.getParam("batchSize"), int(batch_size))
            if tta is not None and stage.hasParam("tta"):
                stage.set(stage.getParam("tta"), tta)
        transformer: Transformer = pipeline
    elif card.kind == "onnx":
        from sparkvision.ml.predictor import ImagePredictor

        transformer = ImagePredictor(modelDir=str(model_dir), topK=0, tta=tta or card.tta,
                                     **({"batchSize": batch_size} if batch_size else {}))
    elif card.kind == "detector":
        from sparkvision.ml.detector import ObjectDetector

        settings = detection or DecodeSettings()
        transformer = ObjectDetector(modelDir=str(model_dir), scoreThreshold=settings.score_threshold,
                                     iouThreshold=settings.iou_threshold, maxBoxes=settings.max_boxes,
                                     **({"batchSize": batch_size} if batch_size else {}))
    else:
        raise ValueError(f"{model_dir}: unknown model kind {card.kind!r} (expected spark_pipeline, onnx or detector)")
    return LoadedModel(model_dir, card, transformer)


@dataclass
class PredictSummary:
    out: str
    model: str
    kind: str
    rows: int
    predicted: int
    errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)
    predicted_classes: dict[str, int] = field(default_factory=dict)
    #: Detectors only: boxes written, in all and per class.
    boxes: int | None = None
    boxes_per_class: dict[str, int] | None = None
    model_version: str = ""
    #: Appended outputs only: the part written (None when nothing was new), and the
    #: input rows skipped because this model version already predicted them.
    batch: int | None = None
    skipped: int | None = None
    #: ``predict --int8``: the guard's verdict (:class:`~sparkvision.deploy.int8.Int8Decision`).
    int8: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_every_row_once(inputs: DataFrame, written: DataFrame, sample: int = 5) -> int:
    """Raise unless ``written`` holds each input path exactly as often as ``inputs`` does.

    One Spark job on the paths only (a full outer join of per-path counts); returns the
    number of rows.
    """
    expected = inputs.groupBy(PATH).agg(F.count(F.lit(1)).alias("n_in"))
    got = written.groupBy(PATH).agg(F.count(F.lit(1)).alias("n_out"))
    joined = expected.join(got, PATH, "full_outer")
    stats = joined.agg(
        F.sum(F.coalesce("n_in", F.lit(0))).alias("rows_in"),
        F.sum(F.coalesce("n_out", F.lit(0))).alias("rows_out"),
        F.sum(F.when(F.coalesce("n_in", F.lit(0)) != F.coalesce("n_out", F.lit(0)), 1).otherwise(0)).alias("bad"),
    ).first()
    rows_in, rows_out, bad = int(stats["rows_in"] or 0), int(stats["rows_out"] or 0), int(stats["bad"] or 0)
    if bad or rows_in != rows_out:
        examples = [
            (r[PATH], r["n_in"], r["n_out"])
            for r in joined.where(F.coalesce("n_in", F.lit(0)) != F.coalesce("n_out", F.lit(0))).limit(sample).collect()
        ]
        raise PredictionCheckError(
            f"predictions hold {rows_out} rows for {rows_in} input rows; {bad} paths differ, e.g. "
            f"(path, input rows, output rows): {examples}"
        )
    return rows_out


def predict(
    spark: SparkSession,
    model_dir: str | Path,
    frame: DataFrame,
    out: str,
    overwrite: bool = False,
    batch_size: int | None = None,
    detection: DecodeSettings | None = None,
    tta: str | None = None,
    int8: bool = False,
    int8_max_drop: float = 0.5,
) -> PredictSummary:
    """Write ``frame``'s predictions to ``out`` (Parquet), all or nothing.

    The output is staged, checked to hold every input row exactly once, and only then
    renamed into place; an existing ``out`` is refused unless ``overwrite``. ``int8``
    quantises an fp32 classifier on the fly under the accuracy guard (:meth:`LoadedModel.to_int8`).
    """
    model = load_model(model_dir, batch_size, detection, tta)
    frame = as_model_frame(frame)  # Spark's image source: path from each image's origin
    decision = model.to_int8(frame, int8_max_drop) if int8 else None
    predictions = model.written(frame)
    with storage.atomic_dir(out, spark, overwrite=overwrite) as staging:
        with spark_progress(spark, "predict"):
            predictions.write.mode("error").parquet(staging)
        written = spark.read.parquet(staging)
        with spark_progress(spark, "check"):
            rows = check_every_row_once(frame.select(PATH), written.select(PATH))
        summary = _summarize(written, rows)
        # `evaluate` reads the probability order from here when it is not given --model.
        storage.write_text(staging.rstrip("/") + "/" + PREDICTIONS_MARKER, model.marker(), spark)
    return PredictSummary(out=out, model=str(model.model_dir), kind=model.card.kind, model_version=model.version,
                          int8=decision.to_dict() if decision is not None else None, **summary)


class _NothingNew(Exception):
    """Raised inside a part's staging to drop it: every input row was predicted before."""


def predict_incremental(
    spark: SparkSession,
    model_dir: str | Path,
    frame: DataFrame,
    out: str,
    source: str | None = None,
    ingest: IngestSettings | None = None,
    glob: str | None = None,
    key: str = "auto",
    batch_size: int | None = None,
    detection: DecodeSettings | None = None,
    tta: str | None = None,
) -> PredictSummary:
    """Predict only the rows of ``frame`` that this model version has not predicted into ``out`` yet.

    ``out`` is an appended table (``OUT/batch=N/``); the new rows become the next part,
    checked to hold each of them exactly once and added in one rename. A row is known
    when ``out`` holds its path with the same ``source_key`` and ``model_version``: a
    changed file, or a new model, predicts again. ``key``: ``stat`` (size and
    modification time, listed by Spark without opening files; needs ``source``, a
    folder or Hadoop URI), ``hash`` (SHA-256 of the bytes) or ``auto`` (``stat`` when
    ``source`` is given, else ``hash``). With nothing new, nothing is written.
    """
    if key not in ("auto", "stat", "hash"):
        raise ValueError(f"key must be auto, stat or hash, not {key!r}")
    if key == "stat" and source is None:
        raise ValueError("key 'stat' needs the source folder or URI to list sizes and modification times")
    model = load_model(model_dir, batch_size, detection, tta)
    frame = with_source_key(spark, as_model_frame(frame), source if key in ("auto", "stat") else None,
                            ingest, glob)
    known = appended_rows(spark, out, model)
    todo = frame
    if known is not None:
        todo = frame.join(known.where(F.col(MODEL_VERSION) == model.version).select(PATH, SOURCE_KEY).distinct(),
                          [PATH, SOURCE_KEY], "left_anti")
    batch = next_batch(spark, out)
    summary: dict[str, Any] | None = None
    try:
        with storage.atomic_dir(f"{out.rstrip('/')}/{BATCH}={batch}", spark) as staging:
            with spark_progress(spark, "predict"):
                model.written(todo, keep=(SOURCE_KEY,)).write.parquet(staging)
            written = spark.read.parquet(staging)
            if written.limit(1).count() == 0:
                raise _NothingNew
            with spark_progress(spark, "check"):
                rows = check_every_row_once(todo.select(PATH), written.select(PATH))
            summary = _summarize(written, rows)
        storage.write_text(f"{out.rstrip('/')}/{PREDICTIONS_MARKER}", model.marker(layout="appended"), spark)
    except _NothingNew:
        log.info("nothing new under the source for model %s: %s unchanged", model.version, out)
    with spark_progress(spark, "count"):
        total = frame.count()
    written_rows = summary["rows"] if summary else 0
    summary = summary or {"rows": 0, "predicted": 0, "errors": 0}
    return PredictSummary(out=out, model=str(model.model_dir), kind=model.card.kind, model_version=model.version,
                          batch=batch if written_rows else None, skipped=total - written_rows, **summary)


def with_source_key(spark: SparkSession, frame: DataFrame, source: str | None,
                    ingest: IngestSettings | None = None, glob: str | None = None) -> DataFrame:
    """``frame`` with ``source_key``: ``<size>:<mtime ms>`` listed from ``source``, or ``sha256:<hex>`` of the bytes.

    Files Spark's listing does not show (empty, unreadable, names Java cannot hold) are
    keyed by their error, so a rerun does not predict them again until they change.
    """
    if source is None:
        digest = F.concat(F.lit("sha256:"), F.sha2(F.col(CONTENT), 256))
        return frame.withColumn(SOURCE_KEY, F.coalesce(digest, F.concat(F.lit("unread:"), F.col(ERROR))))
    from sparkvision.io.sources import binary_file_reader

    ingest = ingest or IngestSettings()
    root = storage.qualify(spark, source).rstrip("/")
    listing = binary_file_reader(spark.read, root, ingest, glob).load(source).select(
        PATH, F.concat_ws(":", F.col("length"), F.unix_millis(F.col("modificationTime"))).alias("_stat"))
    unlisted = F.concat(F.lit("unlisted:"), F.coalesce(F.col(ERROR), F.lit("")))
    return frame.join(listing, PATH, "left").withColumn(SOURCE_KEY, F.coalesce(F.col("_stat"), unlisted)).drop("_stat")


def appended_rows(spark: SparkSession, out: str, model: LoadedModel) -> DataFrame | None:
    """The rows already in appended output ``out`` (None when it does not exist yet); refuses another layout."""
    if not storage.exists(out, spark):
        return None
    marker = f"{out.rstrip('/')}/{PREDICTIONS_MARKER}"
    found = json.loads(storage.read_text(marker, spark)) if storage.exists(marker, spark) else {}
    if found.get("layout") != "appended":
        raise AppendedOutputError(
            f"{out} exists and is not an appended predictions table (it was written by a full predict, or is "
            "something else); give a new --out")
    if found.get("checkpoint"):
        raise AppendedOutputError(f"{out} is written by a stream (checkpoint {found['checkpoint']}), whose micro-batch "
                                  "ids name its parts; give --incremental a new --out")
    if found.get("kind", model.card.kind) != model.card.kind and "detector" in (found.get("kind"), model.card.kind):
        raise AppendedOutputError(f"{out} holds {found['kind']} predictions; a {model.card.kind} model cannot append "
                                  "to it (its columns differ)")
    if not [name for name in storage.list_dir(out, spark) if name.startswith(f"{BATCH}=")]:
        return None
    return spark.read.parquet(out)


def next_batch(spark: SparkSession, out: str) -> int:
    """The number of the next part of appended output ``out``: one more than the largest."""
    if not storage.exists(out, spark):
        return 0
    numbers = [int(name.split("=", 1)[1]) for name in storage.list_dir(out, spark)
               if name.startswith(f"{BATCH}=") and name.split("=", 1)[1].isdigit()]
    return max(numbers, default=-1) + 1


def probability_labels(spark: SparkSession, predictions: str,
                       model_dir: str | Path | None = None) -> tuple[list[str], str]:
    """The order of a predictions set's ``probability`` values, and where it came from.

    The model card's when ``model_dir`` is given, else the marker :func:`predict` wrote
    next to the predictions; ``([], "")`` when none is known (probability metrics are then
    skipped, a warning says so).
    """
    if model_dir:
        return list(load_card(model_dir).labels), f"{model_dir}/sparkvision_model.json"
    marker = predictions.rstrip("/") + "/" + PREDICTIONS_MARKER
    try:
        if storage.exists(marker, spark):
            found = json.loads(storage.read_text(marker, spark)).get("labels")
            if found:
                return list(found), marker
    except Exception as exc:  # noqa: BLE001 - an unreadable marker only costs the probability metrics
        log.debug("cannot read %s: %s", marker, exc)
    log.warning("no label order known (give --model or --labels): top-k, log loss and calibration are skipped")
    return [], ""


def _summarize(written: DataFrame, rows: int) -> dict[str, Any]:
    kinds = {
        r["kind"]: int(r["count"])
        for r in written.where(F.col(ERROR).isNotNull())
        .groupBy(F.split(F.col(ERROR), ":").getItem(0).alias("kind")).count().collect()
    }
    errors = sum(kinds.values())
    if "boxes" in written.columns:  # a detector: boxes per class, over every image
        boxes = written.select(F.explode("boxes").alias("box")).groupBy("box.label").count().collect()
        classes = {r["label"]: int(r["count"]) for r in boxes}
        return {
            "rows": rows, "predicted": rows - errors, "errors": errors, "error_kinds": dict(sorted(kinds.items())),
            "predicted_classes": {}, "boxes": sum(classes.values()), "boxes_per_class": dict(sorted(classes.items())),
        }
    classes = {
        r["prediction"]: int(r["count"])
        for r in written.where(F.col("prediction").isNotNull()).groupBy("prediction").count().collect()
    }
    return {
        "rows": rows, "predicted": sum(classes.values()), "errors": errors,
        "error_kinds": dict(sorted(kinds.items())), "predicted_classes": dict(sorted(classes.items())),
    }
