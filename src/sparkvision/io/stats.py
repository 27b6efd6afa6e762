"""What is in an image DataFrame, computed by Spark without touching the bytes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

#: Upper bounds (pixels on the longer side) of the size histogram's buckets.
SIZE_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass
class DatasetStats:
    rows: int
    ok: int
    errors: int
    classes: dict[str, int]  # usable rows per class ("<none>" for unlabelled)
    error_kinds: dict[str, int]
    modes: dict[str, int]
    formats: dict[str, int]
    sizes: dict[str, int]  # "<=256" style buckets of the longer side

    def to_dict(self) -> dict:
        return asdict(self)


def _size_bucket() -> F.Column:
    longer = F.greatest("width", "height")
    expr = None
    for bound in SIZE_BUCKETS:
        cond = longer <= bound
        expr = F.when(cond, f"<={bound}") if expr is None else expr.when(cond, f"<={bound}")
    return expr.otherwise(f">{SIZE_BUCKETS[-1]}")


def _counts(frame: DataFrame, column: F.Column) -> dict[str, int]:
    rows = frame.groupBy(column.alias("key")).count().collect()
    return {("<none>" if r["key"] is None else str(r["key"])): int(r["count"]) for r in rows}


def compute_stats(frame: DataFrame) -> DatasetStats:
    """Counts per class, error kind, mode, format and size bucket, from the metadata columns only."""
    meta = frame.select("label", "format", "mode", "width", "height", "error").cache()
    try:
        ok = meta.where(F.col("error").isNull())
        bad = meta.where(F.col("error").isNotNull())
        error_kinds = _counts(bad, F.split(F.col("error"), ":").getItem(0))
        classes = _counts(ok, F.col("label"))
        rows = meta.count()
        n_errors = sum(error_kinds.values())
        return DatasetStats(
            rows=rows,
            ok=rows - n_errors,
            errors=n_errors,
            classes=dict(sorted(classes.items())),
            error_kinds=dict(sorted(error_kinds.items())),
            modes=dict(sorted(_counts(ok, F.col("mode")).items())),
            formats=dict(sorted(_counts(ok, F.col("format")).items())),
            sizes=_counts(ok.where(F.col("width").isNotNull()), _size_bucket()),
        )
    finally:
        meta.unpersist()
