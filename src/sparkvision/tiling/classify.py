"""Classifying tiles with a sparkvision model directory, in Spark or in one process.

Tiles carry IMAGE_SCHEMA's columns, so any sparkvision model step can score them; this
module gives the tiling commands one call, :func:`classify_tiles`, that adds the
predictions columns (``prediction``, ``probability`` in the card's label order) and
passes background and error rows through with nulls. Preprocessing is the model card's
own, through :class:`~sparkvision.preprocess.ImagePreprocessor`, as everywhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType

from sparkvision.io.errors import ErrorKind
from sparkvision.models.model_dir import ModelCard, load_card, onnx_path
from sparkvision.models.runtime import cached_model
from sparkvision.preprocess import ImagePreprocessor

log = logging.getLogger(__name__)

PREDICTION_FIELDS = [
    StructField("prediction", StringType(), True),
    StructField("probability", ArrayType(DoubleType()), True),
]


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


def _classify_batches(
    batches: Iterator[pd.DataFrame], model: Any, card: dict[str, Any], batch_size: int, threads: int
) -> Iterator[pd.DataFrame]:
    classifier = TileClassifier(model.value, ModelCard.from_dict(card), threads, batch_size)
    for batch in batches:
        predictions, probabilities, errors = classifier(list(batch["content"]))
        batch = batch.copy()
        batch["prediction"] = predictions
        batch["probability"] = probabilities
        batch["error"] = [old if old is not None else new for old, new in zip(batch["error"], errors, strict=True)]
        yield batch


def classify_tiles(tiles: DataFrame, model_dir: str | Path, batch_size: int = 64, keep_content: bool = False) -> DataFrame:
    """Tile rows plus ``prediction`` and ``probability`` (the card's label order).

    The ONNX graph reaches executors as a broadcast, and each Python worker keeps one
    ONNX Runtime session for it. ``content`` is dropped from the output unless asked for.
    """
    card = load_card(model_dir)
    model_bytes = onnx_path(model_dir, card).read_bytes()
    spark = tiles.sparkSession
    broadcast = spark.sparkContext.broadcast(model_bytes)
    threads = int(spark.conf.get("spark.task.cpus", "1") or 1)
    schema = StructType(list(tiles.schema.fields) + PREDICTION_FIELDS)
    scored = tiles.mapInPandas(
        partial(_classify_batches, model=broadcast, card=card.to_dict(), batch_size=batch_size, threads=threads),
        schema,
    )
    return scored if keep_content else scored.drop("content")
