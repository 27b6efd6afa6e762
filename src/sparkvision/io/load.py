"""``SRC`` as every command takes it: a built-in name, a sparkvision dataset, or a folder/URI of images."""

from __future__ import annotations

import os
from typing import Literal

from pyspark.sql import DataFrame, SparkSession

from sparkvision import storage
from sparkvision.config import DecodeSettings, IngestSettings
from sparkvision.io.builtin import is_builtin, read_builtin
from sparkvision.io.dataset import is_dataset, read_dataset
from sparkvision.io.sources import ProbeLevel, read_binary_files, read_folder

SourceKind = Literal["auto", "builtin", "dataset", "folder", "binaryFile"]


def resolve_kind(spark: SparkSession, src: str) -> str:
    """Which reader ``src`` needs: built-in names first, then datasets, then image files."""
    if is_builtin(src):
        return "builtin"
    if is_dataset(spark, src) or src.rstrip("/").endswith(".parquet"):
        return "dataset"
    if storage.is_local(src):
        return "folder"
    return "binaryFile"


def load_images(
    spark: SparkSession,
    src: str,
    kind: SourceKind = "auto",
    ingest: IngestSettings | None = None,
    decode: DecodeSettings | None = None,
    glob: str | None = None,
    probe: ProbeLevel = "full",
) -> DataFrame:
    """Rows of IMAGE_SCHEMA for any source, one per input file.

    ``probe`` controls how much of each file is checked when reading image files:
    ``full`` decodes everything (ingest), ``header`` only parses headers and leaves
    decode errors to the model step that decodes anyway (featurize, predict).
    """
    kind = resolve_kind(spark, src) if kind == "auto" else kind
    if kind == "builtin":
        return read_builtin(spark, src)
    if kind == "dataset":
        return read_dataset(spark, src)
    if kind == "folder":
        if not os.path.isdir(storage.local_path(src)):
            raise FileNotFoundError(
                f"{src!r} is not a built-in dataset, a sparkvision dataset or a folder of images"
            )
        return read_folder(spark, src, ingest, decode, glob, probe)
    if kind == "binaryFile":
        return read_binary_files(spark, src, ingest, decode, glob, probe)
    raise ValueError(f"unknown source kind {kind!r}")
