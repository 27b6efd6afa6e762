"""Ingestion: image sources into Spark DataFrames of one schema (see :mod:`sparkvision.io.schema`)."""

from sparkvision.io.dataset import read_dataset, write_dataset
from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.io.load import load_images
from sparkvision.io.schema import IMAGE_COLUMNS, IMAGE_SCHEMA
from sparkvision.io.splits import assign_folds, assign_splits, train_val_test_split
from sparkvision.io.stats import compute_stats

__all__ = [
    "IMAGE_COLUMNS",
    "IMAGE_SCHEMA",
    "ErrorKind",
    "ImageError",
    "assign_folds",
    "assign_splits",
    "compute_stats",
    "load_images",
    "read_dataset",
    "train_val_test_split",
    "write_dataset",
]
