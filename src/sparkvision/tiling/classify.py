"""Classifying tiles with a sparkvision model directory, in Spark or in one process.

Tiles carry IMAGE_SCHEMA's columns, so sparkvision's batch prediction entry point
(:func:`sparkvision.inference.predict.load_model`, any model kind: ``onnx`` or
``spark_pipeline``) scores them directly. :func:`classify_tiles` runs it once over all
tile rows; background rows (no bytes by design) keep null predictions and no error,
rather than becoming "no content" errors.

:class:`TileClassifier` is the same ONNX model and preprocessing without Spark: the
one-process path that the tiling benchmark compares Spark against.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, StringType

from sparkvision.io.errors import ErrorKind
from sparkvision.models.model_dir import ModelCard, load_card, onnx_path
from sparkvision.models.runtime import cached_model
from sparkvision.preprocess import ImagePreprocessor

log = logging.getLogger(__name__)

def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class TileClassifier:
    """A model directory's ONNX graph and preprocessing, applied to batches of tile bytes."""

    def __init__(self, model: bytes | str | Path, card: ModelCard, threads: int = 1, batch_size: int = 64) -> None:
        self.card = card
        self.labels = list(card.labels)
        self.preprocessor = ImagePreprocessor(card.preprocess)
        self.model = cached_model(model, threads)
        self.batch_size = batch_size

    @classmethod
    def from_dir(cls, model_dir: str | Path, threads: int = 1, batch_size: int = 64) -> TileClassifier:
        card = load_card(model_dir)
        return cls(onnx_path(model_dir, card), card, threads, batch_size)

    def __call__(self, contents: Sequence[bytes | None]) -> tuple[list[str | None], list[list[float] | None], list[str | None]]:
        """(prediction, probability, error) per input; None content gives nulls and no error."""
        n = len(contents)
        predictions: list[str | None] = [None] * n
        probabilities: list[list[float] | None] = [None] * n
        errors: list[str | None] = [None] * n
        present = [i for i, c in enumerate(contents) if c is not None]
        for start in range(0, len(present), self.batch_size):
            chunk = present[start:start + self.batch_size]
            batch = self.preprocessor([contents[i] for i in chunk])
            for pos, error in enumerate(batch.errors):
                errors[chunk[pos]] = error
            if len(batch.index) == 0:
                continue
            logits = self.model.run(batch.tensor, ["logits"])[0]
            probs = softmax(logits.astype(np.float64))
            for row, pos in enumerate(batch.index):
                target = chunk[int(pos)]
                if not np.all(np.isfinite(probs[row])):
                    errors[target] = f"{ErrorKind.MODEL.value}: non-finite model output"
                    continue
                probabilities[target] = probs[row].tolist()
                predictions[target] = self.labels[int(np.argmax(probs[row]))]
        return predictions, probabilities, errors


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
