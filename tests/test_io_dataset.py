"""sparkvision's Parquet dataset: lossless round trip, atomic writes, refusal to overwrite, statistics."""

from __future__ import annotations

import pytest
from image_cases import encode, noise, smooth
from PIL import Image
from pyspark.sql import functions as F

from sparkvision.config import DecodeSettings
from sparkvision.io import IMAGE_SCHEMA, compute_stats, load_images, read_dataset, write_dataset
from sparkvision.io.dataset import MARKER, is_dataset, read_manifest
from sparkvision.io.sources import describe_rows
from sparkvision.storage import OutputExistsError


@pytest.fixture(scope="module")
def frame(spark):
    """IMAGE_SCHEMA rows built by the same describe step the sources use (no files needed)."""
    big = encode(Image.fromarray(smooth(300, 400)), "JPEG")
    contents = [
        encode(Image.fromarray(smooth(48, 64)), "JPEG"),
        encode(Image.fromarray(noise(20, 30, 1)), "PNG"),
        big,
        b"",
        b"plain text",
        encode(Image.fromarray(noise(5, 5)), "PNG")[:40],
        None,
    ]
    rows = describe_rows(
        paths=[f"file:/d/{i}.img" for i in range(len(contents))],
        labels=["cat", "dog", "cat", "dog", "cat", None, "dog"],
        contents=contents,
        read_errors=[None] * 6 + ["unreadable: cannot read file (Permission denied)"],
        decode=DecodeSettings(),
        probe="full",
    )
    return spark.createDataFrame(rows, schema=IMAGE_SCHEMA)


def _sorted(df):
    return [r.asDict() for r in df.orderBy("path").collect()]


def test_round_trip_keeps_every_column_and_byte(spark, frame, tmp_path):
    out = str(tmp_path / "ds")
    manifest = write_dataset(spark, frame, out, source="unit test")
    assert (manifest.rows, manifest.ok, manifest.errors) == (7, 3, 4)
    assert manifest.classes == ["cat", "dog"] and manifest.source == "unit test"
    assert (tmp_path / "ds" / MARKER).is_file() and is_dataset(spark, out)
    assert read_manifest(spark, out) == manifest
    back = read_dataset(spark, out)
    assert [(f.name, f.dataType) for f in back.schema] == [(f.name, f.dataType) for f in IMAGE_SCHEMA]
    assert _sorted(back) == _sorted(frame)
    assert _sorted(load_images(spark, out)) == _sorted(frame)  # SRC auto-detects a dataset
    assert not is_dataset(spark, str(tmp_path))


def test_existing_output_is_refused_then_replaced_atomically(spark, frame, tmp_path):
    out = str(tmp_path / "ds")
    write_dataset(spark, frame, out)
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_dataset(spark, frame.limit(2), out)
    assert read_manifest(spark, out).rows == 7

    # A job that fails half-way must leave the old dataset whole and no staging behind.
    boom = F.udf(lambda label: 1 // 0 if label == "dog" else label, "string")
    with pytest.raises(Exception, match="ZeroDivisionError"):
        write_dataset(spark, frame.withColumn("label", boom("label")), out, overwrite=True)
    assert read_dataset(spark, out).count() == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]

    manifest = write_dataset(spark, frame.where(F.col("error").isNull()), out, overwrite=True)
    assert manifest.rows == 3 and read_dataset(spark, out).count() == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no .staging-/.retired- left


def test_stats_count_classes_errors_modes_formats_and_sizes(frame):
    stats = compute_stats(frame)
    assert (stats.rows, stats.ok, stats.errors) == (7, 3, 4)
    assert stats.classes == {"cat": 2, "dog": 1}
    assert stats.error_kinds == {"empty_file": 1, "not_an_image": 1, "truncated": 1, "unreadable": 1}
    assert stats.modes == {"L": 1, "RGB": 2}
    assert stats.formats == {"JPEG": 2, "PNG": 1}
    assert list(stats.sizes.items()) == [("<=32", 1), ("<=64", 1), ("<=512", 1)]
    assert [e["path"] for e in stats.error_examples] == [f"file:/d/{i}.img" for i in (3, 4, 5, 6)]
    assert stats.error_examples[3]["error"].startswith("unreadable: ")
    assert compute_stats(frame, examples=1).error_examples == stats.error_examples[:1]
