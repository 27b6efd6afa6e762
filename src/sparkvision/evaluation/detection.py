"""Detection metrics computed by Spark: boxes matched per image in tasks, only counts reach the driver.

Inputs are two DataFrames:

* predictions, as ``sparkvision detect`` writes them: ``path``, ``boxes``
  (``array<struct<label, score, xmin, ymin, xmax, ymax>>``, pixels of the image), ``error``;
* truth, image rows with ``objects`` (``array<struct<label, xmin, ymin, xmax, ymax,
  difficult>>``, pixels of the image as displayed) and ``error``, as detection ingest writes them.

Each side is first grouped by ``path`` (duplicate rows are counted, their boxes pooled), then the
two are joined (full outer, so an image on one side only is counted too). ``mapInPandas`` matches
each image's boxes in the tasks with :func:`~sparkvision.evaluation.detection_metrics.count_images`,
and one ``groupBy`` sums the counts: per (class, score rounded to ``score_resolution``) the boxes
and their true/false positives under each matching rule, per class the positives, per image
status the images. So the driver gets at most classes x (1 / score_resolution + 1) rows plus a
few, however many images there are, and
:func:`~sparkvision.evaluation.detection_metrics.metrics_from_counts` does the rest. The rules,
the averaging and the treatment of ties, difficult boxes and error rows are documented there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StructType

from sparkvision.config import DetectionEvaluationSettings
from sparkvision.evaluation.detection_metrics import (
    COCO50,
    COUNT_KEYS,
    COUNT_SUMS,
    FP,
    IGNORED,
    OK,
    TP,
    DetectionResult,
    ImageInput,
    count_images,
    image_f1,
    match_image,
    metrics_from_counts,
)

log = logging.getLogger(__name__)

BOX_TYPE = "array<struct<label:string,score:double,xmin:double,ymin:double,xmax:double,ymax:double>>"
OBJECT_TYPE = "array<struct<label:string,xmin:double,ymin:double,xmax:double,ymax:double,difficult:boolean>>"
COUNT_SCHEMA = ", ".join(
    [f"{k} {'long' if k == 'score_key' else 'string'}" for k in COUNT_KEYS] + [f"{c} long" for c in COUNT_SUMS]
)
WORST_SCHEMA = (
    "path string, f1 double, tp long, fp long, fn long, "
    "truths array<struct<label:string,xmin:double,ymin:double,xmax:double,ymax:double,difficult:boolean,"
    "found:boolean>>, "
    "boxes array<struct<label:string,score:double,xmin:double,ymin:double,xmax:double,ymax:double,outcome:string>>"
)


def _element_fields(frame: DataFrame, column: str) -> list[str]:
    dtype = frame.schema[column].dataType
    if not isinstance(dtype, ArrayType) or not isinstance(dtype.elementType, StructType):
        raise ValueError(f"{column} must be an array of structs, got {dtype.simpleString()}")
    return [f.name for f in dtype.elementType.fields]


def _structs(column: str, fields: list[str], wanted: dict[str, str], defaults: dict[str, Column]) -> Column:
    missing = [name for name in wanted if name not in fields and name not in defaults]
    if missing:
        raise ValueError(f"{column} elements need the fields {', '.join(wanted)}; missing {', '.join(missing)}")
    return F.transform(
        F.col(column),
        lambda e: F.struct(*[
            (e[name].cast(kind) if name in fields else defaults[name]).alias(name) for name, kind in wanted.items()
        ]),
    )


def normalize_detections(predictions: DataFrame) -> DataFrame:
    """``path, boxes, error`` with the box fields and types the matching expects (extra fields dropped)."""
    missing = [c for c in ("path", "boxes", "error") if c not in predictions.columns]
    if missing:
        raise ValueError(
            f"detection predictions need the columns path, boxes, error (as 'sparkvision detect' writes them); "
            f"missing {', '.join(missing)} (found {', '.join(predictions.columns)})"
        )
    wanted = {"label": "string", "score": "double", "xmin": "double", "ymin": "double", "xmax": "double",
              "ymax": "double"}
    boxes = _structs("boxes", _element_fields(predictions, "boxes"), wanted, {})
    return predictions.select(F.col("path").cast("string").alias("path"), boxes.alias("boxes"),
                              F.col("error").cast("string").alias("error"))


def normalize_truth(truth: DataFrame) -> DataFrame:
    """``path, objects, error``; a missing ``difficult`` field means not difficult."""
    if "objects" not in truth.columns:
        raise ValueError(
            "the truth has no 'objects' column (true boxes): give a Pascal VOC directory, a COCO instances JSON "
            f"or a dataset ingested from one (found {', '.join(truth.columns)})"
        )
    missing = [c for c in ("path",) if c not in truth.columns]
    if missing:
        raise ValueError(f"the truth needs a path column (found {', '.join(truth.columns)})")
    wanted = {"label": "string", "xmin": "double", "ymin": "double", "xmax": "double", "ymax": "double",
              "difficult": "boolean"}
    fields = _element_fields(truth, "objects")
    objects = _structs("objects", fields, wanted, {"difficult": F.lit(False)})
    error = F.col("error").cast("string") if "error" in truth.columns else F.lit(None).cast("string")
    return truth.select(F.col("path").cast("string").alias("path"), objects.alias("objects"), error.alias("error"))


def join_images(predictions: DataFrame, truth: DataFrame) -> DataFrame:
    """One row per path of either side: its truth and prediction rows pooled, and how many rows each side had."""
    pred = normalize_detections(predictions).groupBy("path").agg(
        F.count(F.lit(1)).alias("prediction_rows"),
        F.flatten(F.collect_list("boxes")).alias("boxes"),
        F.max("error").alias("prediction_error"),
    )
    true = normalize_truth(truth).groupBy("path").agg(
        F.count(F.lit(1)).alias("truth_rows"),
        F.flatten(F.collect_list("objects")).alias("objects"),
        F.max("error").alias("truth_error"),
    )
    return true.join(pred, "path", "full_outer")


def _inputs(batch: pd.DataFrame) -> Iterator[ImageInput]:
    for row in batch.itertuples(index=False):
        yield ImageInput(
            row.path,
            objects=row.objects,
            boxes=row.boxes,
            truth_rows=0 if pd.isna(row.truth_rows) else int(row.truth_rows),
            prediction_rows=0 if pd.isna(row.prediction_rows) else int(row.prediction_rows),
            truth_error=None if pd.isna(row.truth_error) else row.truth_error,
            prediction_error=None if pd.isna(row.prediction_error) else row.prediction_error,
        )


def detection_counts(
    predictions: DataFrame, truth: DataFrame, settings: DetectionEvaluationSettings | None = None
) -> pd.DataFrame:
    """The summed counts of every image (a small frame: classes x score values + statuses)."""
    settings = settings or DetectionEvaluationSettings()

    def count(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            counts = count_images(_inputs(batch), settings)
            if len(counts):
                yield counts

    matched = join_images(predictions, truth).mapInPandas(count, COUNT_SCHEMA)
    summed = matched.groupBy(*COUNT_KEYS).agg(*[F.sum(c).alias(c) for c in COUNT_SUMS])
    return summed.toPandas()  # bounded: one row per (class, rounded score) plus per-class and per-status rows


def evaluate_detections(
    predictions: DataFrame, truth: DataFrame, settings: DetectionEvaluationSettings | None = None
) -> DetectionResult:
    """COCO mAP, VOC AP, precision/recall and PR curves of ``predictions`` against ``truth``, in one Spark pass."""
    settings = settings or DetectionEvaluationSettings()
    if not 0 < settings.score_resolution <= 1:
        raise ValueError(f"score_resolution must be in (0, 1], got {settings.score_resolution}")
    if settings.max_detections is not None and settings.max_detections < 1:
        raise ValueError(f"max_detections must be >= 1 or None, got {settings.max_detections}")
    result = metrics_from_counts(detection_counts(predictions, truth, settings), settings)
    judged = result.evaluated_images
    if result.images and not judged:
        log.warning("no image is in both the predictions and the truth: are the paths the same? (%s)",
                    result.image_status)
    elif result.image_status.get("no_truth"):
        log.warning("%d predicted images are not in the truth and are not judged", result.image_status["no_truth"])
    return result


_OUTCOME = {TP: "tp", FP: "fp", IGNORED: "ignored"}


def _worst_rows(batch: pd.DataFrame, settings: DetectionEvaluationSettings) -> pd.DataFrame:
    out: list[dict[str, Any]] = []
    for image in _inputs(batch):
        if image.status != OK:
            continue
        match = match_image(image.objects, image.boxes, settings.max_detections)
        tp, fp, fn = match.operating_point(settings.score_threshold)
        kept = np.flatnonzero(match.scores >= settings.score_threshold)
        found = match.truth_match >= 0
        found[found] = match.scores[match.truth_match[found]] >= settings.score_threshold
        t = match.truths
        out.append({
            "path": image.path, "f1": image_f1(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn,
            "truths": [
                {"label": t.labels[i], "xmin": b[0], "ymin": b[1], "xmax": b[2], "ymax": b[3],
                 "difficult": bool(t.difficult[i]), "found": bool(found[i])}
                for i, b in enumerate(t.boxes.tolist())
            ],
            "boxes": [
                {"label": match.labels[i], "score": float(match.scores[i]), "xmin": b[0], "ymin": b[1],
                 "xmax": b[2], "ymax": b[3], "outcome": _OUTCOME[int(match.outcome[i, COCO50])]}
                for i, b in zip(kept.tolist(), match.boxes[kept].tolist(), strict=True)
            ],
        })
    return pd.DataFrame(out, columns=["path", "f1", "tp", "fp", "fn", "truths", "boxes"])


def worst_images(
    predictions: DataFrame, truth: DataFrame, limit: int, settings: DetectionEvaluationSettings | None = None
) -> list[dict[str, Any]]:
    """The ``limit`` judged images with the lowest F1 at IoU 0.5 and the score threshold, most errors first.

    Only images with a prediction row without error take part (failed ones are counted in the
    metrics). Each comes with its true boxes (``found`` or not) and its boxes scored at least
    ``score_threshold`` (``outcome`` tp, fp or ignored), for drawing. Spark's top-N: only
    ``limit`` rows reach the driver.
    """
    settings = settings or DetectionEvaluationSettings()
    if limit <= 0:
        return []

    def rank(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = _worst_rows(batch, settings)
            if len(rows):
                yield rows

    joined = join_images(predictions, truth).where(
        F.col("truth_rows").isNotNull() & F.col("truth_error").isNull()
        & F.col("prediction_rows").isNotNull() & F.col("prediction_error").isNull()
    )
    rows = (
        joined.mapInPandas(rank, WORST_SCHEMA)
        .orderBy(F.col("f1").asc(), (F.col("fp") + F.col("fn")).desc(), F.col("path"))
        .limit(int(limit))
        .collect()
    )
    return [r.asDict(recursive=True) for r in rows]



def load_truth(spark: SparkSession, src: str, images: str | None = None) -> DataFrame:
    """True boxes from ``src`` through :func:`sparkvision.io.load_images`: a Pascal VOC directory or
    image-set list, a COCO instances JSON (its images in ``images`` when given), or a dataset
    ingested from one. Image bytes are not checked: only the annotations matter here."""
    from sparkvision.io import load_images
    from sparkvision.io.load import resolve_kind

    coco = resolve_kind(spark, src) == "coco"
    frame = load_images(spark, src, probe="none", images=images if coco else None)
    if "objects" not in frame.columns:
        raise ValueError(
            f"{src} has no true boxes (no 'objects' column): give a Pascal VOC directory, a COCO instances JSON "
            "or a dataset ingested from one"
        )
    return frame
