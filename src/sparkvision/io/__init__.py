"""Ingestion: image sources into Spark DataFrames of one schema (see :mod:`sparkvision.io.schema`)."""

from sparkvision.io.dataset import read_dataset, write_dataset
from sparkvision.io.detection import read_coco, read_voc
from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.io.load import load_images
from sparkvision.io.schema import (
    DETECTION_COLUMNS,
    DETECTION_SCHEMA,
    IMAGE_COLUMNS,
    IMAGE_SCHEMA,
    OBJECTS_TYPE,
)
from sparkvision.io.splits import assign_folds, assign_splits, train_val_test_split
from sparkvision.io.stats import compute_stats

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
