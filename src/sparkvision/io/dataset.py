"""sparkvision's own Parquet image dataset: IMAGE_SCHEMA rows, bytes still encoded.

A dataset directory holds Parquet part files plus a ``_sparkvision.json`` marker with
the schema version, row counts, the task (``classify``, or ``detect`` for
DETECTION_SCHEMA rows) and the classes (a detection dataset's in the order given at
ingest, ``--classes``, else sorted). Re-reading it skips listing and decoding
entirely; statistics read only the small columns (Parquet column pruning), never the
bytes. Files are sized by the input partitions (``spark.sql.files.maxPartitionBytes``),
so a dataset of many small images does not become many tiny files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkvision import storage
from sparkvision.io.detection import object_classes
from sparkvision.io.schema import DETECTION_COLUMNS, DETECTION_SCHEMA, IMAGE_COLUMNS, IMAGE_SCHEMA, OBJECTS

log = logging.getLogger(__name__)

MARKER = "_sparkvision.json"
SCHEMA_VERSION = 1


@dataclass
class DatasetManifest:
    rows: int
    ok: int
    errors: int
    classes: list[str] = field(default_factory=list)
    source: str = ""
    schema_version: int = SCHEMA_VERSION
    #: "classify" (IMAGE_SCHEMA, one label per row) or "detect" (DETECTION_SCHEMA, boxes).
    task: str = "classify"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def is_dataset(spark: SparkSession, uri: str) -> bool:
    try:
        return storage.exists(uri.rstrip("/") + "/" + MARKER, spark)
    except Exception:  # noqa: BLE001 - a malformed URI is simply not a dataset
        return False


def read_manifest(spark: SparkSession, uri: str) -> DatasetManifest:
    data = json.loads(storage.read_text(uri.rstrip("/") + "/" + MARKER, spark))
    return DatasetManifest(**data)


def read_dataset(spark: SparkSession, uri: str) -> DataFrame:
    """A dataset written by :func:`write_dataset` (or any Parquet with IMAGE_SCHEMA or DETECTION_SCHEMA)."""
    if is_dataset(spark, uri):
        detect = read_manifest(spark, uri).task == "detect"
    else:
        detect = OBJECTS in spark.read.parquet(uri).columns
    schema, columns = (DETECTION_SCHEMA, DETECTION_COLUMNS) if detect else (IMAGE_SCHEMA, IMAGE_COLUMNS)
    return spark.read.schema(schema).parquet(uri).select(*columns)


def write_dataset(
    spark: SparkSession,
    frame: DataFrame,
    uri: str,
    overwrite: bool = False,
    source: str = "",
    classes: list[str] | None = None,
) -> DatasetManifest:
    """Write IMAGE_SCHEMA (or DETECTION_SCHEMA) rows atomically and return the manifest (counts read back cheaply).

    ``classes`` fixes a detection dataset's class order (default: the classes of its boxes, sorted).
    """
    detect = OBJECTS in frame.columns
    frame = frame.select(*(DETECTION_COLUMNS if detect else IMAGE_COLUMNS))
    with storage.atomic_dir(uri, spark, overwrite=overwrite) as staging:
        frame.write.mode("error").parquet(staging)
        manifest = summarize_written(spark, staging, source)
        if detect:
            manifest.task = "detect"
            manifest.classes = list(classes) if classes is not None else object_classes(spark.read.parquet(staging))
        storage.write_text(staging + "/" + MARKER, manifest.to_json(), spark)
    return manifest


def summarize_written(spark: SparkSession, uri: str, source: str = "") -> DatasetManifest:
    written = spark.read.parquet(uri).select("label", "error")
    row = written.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count("error").alias("errors"),
        F.sort_array(F.collect_set(F.when(F.col("error").isNull(), F.col("label")))).alias("classes"),
    ).first()
    rows, errors = int(row["rows"]), int(row["errors"])
    return DatasetManifest(rows=rows, ok=rows - errors, errors=errors, classes=list(row["classes"]), source=source)
