"""Hadoop FileSystem operations from the driver, so outputs work on ``file:``, ``hdfs://`` and object stores.

All sparkvision outputs (datasets, predictions, models) are written with
:func:`atomic_output`: into a hidden sibling directory first, then renamed into place,
so a reader sees either the old complete output or the new complete one, never a
half-written directory. Re-running into an existing output refuses unless told to
replace it, and a replacement swaps whole directories.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


class OutputExistsError(FileExistsError):
    """An output directory exists and replacing it was not asked for."""


def _hadoop(spark: SparkSession, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, path


def qualify(spark: SparkSession, uri: str) -> str:
    """The fully qualified URI (``/tmp/x`` becomes ``file:/tmp/x``)."""
    fs, path = _hadoop(spark, uri)
    return fs.makeQualified(path).toString()


def exists(spark: SparkSession, uri: str) -> bool:
    fs, path = _hadoop(spark, uri)
    return bool(fs.exists(path))


def delete(spark: SparkSession, uri: str) -> None:
    fs, path = _hadoop(spark, uri)
    fs.delete(path, True)


def mkdirs(spark: SparkSession, uri: str) -> None:
    fs, path = _hadoop(spark, uri)
    fs.mkdirs(path)


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    fs, path = _hadoop(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def read_text(spark: SparkSession, uri: str) -> str:
    fs, path = _hadoop(spark, uri)
    jvm = spark.sparkContext._jvm
    stream = fs.open(path)
    try:
        return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def _rename(spark: SparkSession, src: str, dst: str) -> None:
    fs, src_path = _hadoop(spark, src)
    _, dst_path = _hadoop(spark, dst)
    if not fs.rename(src_path, dst_path):
        raise OSError(f"could not rename {src} to {dst}")


@contextmanager
def atomic_output(spark: SparkSession, uri: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary URI to write into; on success it becomes ``uri`` in one rename.

    With ``overwrite`` an existing output is moved aside, the new one renamed in, and
    only then the old one deleted. On failure the temporary output is removed and the
    existing output is left untouched.
    """
    target = qualify(spark, uri).rstrip("/")
    if exists(spark, target) and not overwrite:
        raise OutputExistsError(f"{uri} already exists; pass overwrite (--overwrite) to replace it")
    parent, _, name = target.rpartition("/")
    mkdirs(spark, parent)
    token = uuid.uuid4().hex[:12]
    staging = f"{parent}/{name}.staging-{token}"
    try:
        yield staging
    except BaseException:
        if exists(spark, staging):
            delete(spark, staging)
        raise
    retired = f"{parent}/{name}.retired-{token}"
    had_old = exists(spark, target)
    if had_old:
        _rename(spark, target, retired)
    try:
        _rename(spark, staging, target)
    except BaseException:
        if had_old:
            _rename(spark, retired, target)
        raise
    if had_old:
        delete(spark, retired)
    log.info("wrote %s", target)
