"""Classifying tiles with a sparkvision model directory in Spark.

Tiles carry IMAGE_SCHEMA's columns, so sparkvision's batch prediction entry point
(:func:`sparkvision.inference.predict.load_model`, any model kind: ``onnx`` or
``spark_pipeline``) scores them directly. :func:`classify_tiles` runs it once over all
tile rows; background rows (no bytes by design) keep null predictions and no error,
rather than becoming "no content" errors. Without Spark, tile bytes go through
:class:`sparkvision.models.runner.ClassifierRunner` like any other images.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, StringType


def classify_tiles(tiles: DataFrame, model_dir: str | Path, batch_size: int | None = None) -> DataFrame:
    """Tile rows (without ``content``) plus ``prediction`` and ``probability`` (the card's label order).

    One pass of the shared batch-prediction transformer over every row (tiles computed
    on the fly are not tiled twice). Background rows have no bytes by design: their
    null predictions are not errors, so their ``error`` stays null. Rows that arrived
    with an error keep it.
    """
    from sparkvision.inference.predict import load_model

    model = load_model(model_dir, batch_size)
    background = F.coalesce(F.col("background"), F.lit(False))
    columns = [c for c in tiles.columns if c not in ("content", "error")]
    return model.transform(tiles).select(
        *columns,
        F.when(background, F.lit(None)).otherwise(F.col("error")).cast(StringType()).alias("error"),
        F.when(background, F.lit(None)).otherwise(F.col("prediction")).cast(StringType()).alias("prediction"),
        F.when(background, F.lit(None)).otherwise(F.col("probability"))
        .cast(ArrayType(DoubleType())).alias("probability"),
    )
