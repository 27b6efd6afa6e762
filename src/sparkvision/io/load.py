"""``SRC`` as every command takes it: a built-in name, a sparkvision dataset, a folder/URI of images,
or a box-labelled set (a Pascal VOC folder or image-set list, a COCO ``.json``); in Python also a
DataFrame read by Spark's own ``image`` source."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from pyspark.sql import DataFrame, SparkSession

from sparkvision import storage
from sparkvision.config import DecodeSettings, IngestSettings
from sparkvision.io.builtin import is_builtin, read_builtin
from sparkvision.io.dataset import is_dataset, read_dataset
from sparkvision.io.detection import is_coco_file, read_coco, read_voc, voc_source
from sparkvision.io.sources import ProbeLevel, read_binary_files, read_folder

SourceKind = Literal["auto", "builtin", "dataset", "folder", "binaryFile", "voc", "coco"]


def resolve_kind(spark: SparkSession, src: str) -> str:
    """Which reader ``src`` needs: built-in names, datasets, box-labelled sets, then image files."""
    if is_builtin(src):
        return "builtin"
    if is_dataset(spark, src) or src.rstrip("/").endswith(".parquet"):
        return "dataset"
    if voc_source(src) is not None:
        return "voc"
    if is_coco_file(src):
        return "coco"
    if storage.is_local(src):
        return "folder"
    return "binaryFile"


def load_images(
    spark: SparkSession,
    src: str | DataFrame,
    kind: SourceKind = "auto",
    ingest: IngestSettings | None = None,
    decode: DecodeSettings | None = None,
    glob: str | None = None,
    probe: ProbeLevel = "full",
    classes: Sequence[str] | None = None,
    images: str | None = None,
) -> DataFrame:
    """Rows of IMAGE_SCHEMA for any source, one per input file (DETECTION_SCHEMA for VOC and COCO).

    ``probe`` controls how much of each file is checked when reading image files:
    ``full`` decodes everything (ingest), ``header`` only parses headers and leaves
    decode errors to the model step that decodes anyway (featurize, predict).
    ``classes`` (the allowed object classes) and ``images`` (where a COCO file's images
    are) apply to box-labelled sources only.

    ``src`` may also be a DataFrame read by ``spark.read.format("image")``: its rows
    become IMAGE_SCHEMA rows, their pixels stored as PNG (see
    :func:`sparkvision.io.image_source.read_image_frame`; a ``label`` column is kept).
    """
    if isinstance(src, DataFrame):
        if kind != "auto" or classes is not None or images is not None or glob is not None:
            raise ValueError("a DataFrame from Spark's image source takes no kind, glob, classes or images")
        from sparkvision.io.image_source import read_image_frame

        return read_image_frame(src, decode)
    kind = resolve_kind(spark, src) if kind == "auto" else kind
    if kind not in ("voc", "coco") and (classes is not None or images is not None):
        raise ValueError(f"classes and images apply to VOC and COCO sources; {src!r} is read as {kind!r}")
    if kind == "voc":
        return read_voc(spark, src, ingest, decode, classes, probe)
    if kind == "coco":
        return read_coco(spark, src, images, ingest, decode, classes, probe)
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
