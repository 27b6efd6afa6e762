"""Ingestion: image sources into Spark DataFrames of one schema (see :mod:`sparkvision.io.schema`).

Decode rules (:mod:`.decode`) and error kinds (:mod:`.errors`) need no Spark: the server,
training ranks and the preprocessing path import them without a JVM. The Spark readers
and writers below are imported on first use (PEP 562), so ``import sparkvision.io``
never loads pyspark by itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sparkvision.io.errors import ErrorKind, ImageError

#: Public name -> the module that defines it (imported when the name is first used).
_SPARK_NAMES = {
    "DETECTION_COLUMNS": "sparkvision.io.schema",
    "DETECTION_SCHEMA": "sparkvision.io.schema",
    "OBJECTS_TYPE": "sparkvision.io.schema",
    "read_coco": "sparkvision.io.detection",
    "read_voc": "sparkvision.io.detection",
    "IMAGE_COLUMNS": "sparkvision.io.schema",
    "IMAGE_SCHEMA": "sparkvision.io.schema",
    "assign_folds": "sparkvision.io.splits",
    "assign_splits": "sparkvision.io.splits",
    "compute_stats": "sparkvision.io.stats",
    "load_images": "sparkvision.io.load",
    "read_dataset": "sparkvision.io.dataset",
    "train_val_test_split": "sparkvision.io.splits",
    "write_dataset": "sparkvision.io.dataset",
}

__all__ = [
    "DETECTION_COLUMNS",
    "DETECTION_SCHEMA",
    "IMAGE_COLUMNS",
    "IMAGE_SCHEMA",
    "ErrorKind",
    "ImageError",
    "OBJECTS_TYPE",
    "assign_folds",
    "assign_splits",
    "compute_stats",
    "load_images",
    "read_coco",
    "read_dataset",
    "read_voc",
    "train_val_test_split",
    "write_dataset",
]


def __getattr__(name: str) -> Any:
    module = _SPARK_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SPARK_NAMES})


if TYPE_CHECKING:
    from sparkvision.io.dataset import read_dataset, write_dataset
    from sparkvision.io.load import load_images
    from sparkvision.io.schema import IMAGE_COLUMNS, IMAGE_SCHEMA
    from sparkvision.io.splits import assign_folds, assign_splits, train_val_test_split
    from sparkvision.io.stats import compute_stats
