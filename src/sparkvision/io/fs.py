"""Hadoop FileSystem operations with the ``(spark, uri)`` signatures of earlier releases.

Superseded by :mod:`sparkvision.storage`, which owns every path, read and atomic write;
these names delegate to it so existing imports keep working.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sparkvision import storage
from sparkvision.storage import OutputExistsError, qualify

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["OutputExistsError", "atomic_output", "delete", "exists", "qualify", "read_text", "write_text"]


def exists(spark: SparkSession, uri: str) -> bool:
    return storage.exists(uri, spark)


def delete(spark: SparkSession, uri: str) -> None:
    storage.delete(uri, spark)


def read_text(spark: SparkSession, uri: str) -> str:
    return storage.read_text(uri, spark)


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    storage.write_text(uri, text, spark)


@contextmanager
def atomic_output(spark: SparkSession, uri: str, overwrite: bool = False) -> Iterator[str]:
    with storage.atomic_dir(uri, spark, overwrite=overwrite) as staging:
        yield staging
