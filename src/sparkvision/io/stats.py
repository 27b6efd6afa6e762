"""What is in an image DataFrame, computed by Spark without touching the bytes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkvision.io.schema import CLIPPED_BOXES, OBJECTS

#: Upper bounds (pixels on the longer side) of the size histogram's buckets.
SIZE_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass
class DatasetStats:
    rows: int
    ok: int
    errors: int
    #: Usable rows per class ("<none>" for unlabelled); for detection, usable boxes per class.
    classes: dict[str, int]
    error_kinds: dict[str, int]
    modes: dict[str, int]
    formats: dict[str, int]
    sizes: dict[str, int]  # "<=256" style buckets of the longer side, smallest first
    #: A few rows with errors (path and error), so a person can go and look at them.
    error_examples: list[dict[str, str]] = field(default_factory=list)
    #: "detect" for box-labelled rows (DETECTION_SCHEMA), which also report their boxes
    #: (in usable rows) and how many of them were clipped into the image.
    task: str = "classify"
    objects: int | None = None
    clipped_boxes: int | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.task == "classify":
            for key in ("task", "objects", "clipped_boxes"):
                data.pop(key)
        return data


def _size_bucket() -> F.Column:
    longer = F.greatest("width", "height")
    expr = None
    for bound in SIZE_BUCKETS:
        cond = longer <= bound
        expr = F.when(cond, f"<={bound}") if expr is None else expr.when(cond, f"<={bound}")
    return expr.otherwise(f">{SIZE_BUCKETS[-1]}")


def _bucket_order(name: str) -> tuple[int, int]:
    return (1, 0) if name.startswith(">") else (0, int(name[2:]))


def _add(counts: dict[str, int], key: str | None, n: int) -> None:
    name = "<none>" if key is None else str(key)
    counts[name] = counts.get(name, 0) + n


def compute_stats(frame: DataFrame, examples: int = 10) -> DatasetStats:
    """Counts per class, error kind, mode, format and size bucket, from the metadata columns only.

    One aggregation over the metadata (cached, so a source that decodes is read once):
    counts per combination of the columns come back small, and Python sums them up.
    """
    detect = OBJECTS in frame.columns
    extra = [OBJECTS, CLIPPED_BOXES] if detect else []
    meta = frame.select("path", "label", "format", "mode", "width", "height", "error", *extra).cache()
    try:
        is_ok = F.col("error").isNull()
        groups = meta.groupBy(
            F.when(is_ok, F.col("label")).alias("label"),
            F.when(is_ok, F.col("format")).alias("format"),
            F.when(is_ok, F.col("mode")).alias("mode"),
            F.when(is_ok & F.col("width").isNotNull(), _size_bucket()).alias("size"),
            F.split(F.col("error"), ":").getItem(0).alias("kind"),
            is_ok.alias("ok"),
        ).count().collect()
        classes: dict[str, int] = {}
        kinds: dict[str, int] = {}
        modes: dict[str, int] = {}
        formats: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for g in groups:
            n = int(g["count"])
            if g["ok"]:
                _add(classes, g["label"], n)
                _add(modes, g["mode"], n)
                _add(formats, g["format"], n)
                if g["size"] is not None:
                    _add(sizes, g["size"], n)
            else:
                _add(kinds, g["kind"], n)
        n_errors = sum(kinds.values())
        rows = n_errors + sum(classes.values())
        detection = _detection_counts(meta.where(is_ok)) if detect else {}
        if detect:
            classes = detection.pop("classes")
        bad = meta.where(~is_ok).select("path", "error").orderBy("path").limit(examples).collect() if n_errors else []
        return DatasetStats(
            rows=rows,
            ok=rows - n_errors,
            errors=n_errors,
            classes=dict(sorted(classes.items())),
            error_kinds=dict(sorted(kinds.items())),
            modes=dict(sorted(modes.items())),
            formats=dict(sorted(formats.items())),
            sizes=dict(sorted(sizes.items(), key=lambda item: _bucket_order(item[0]))),
            error_examples=[{"path": r["path"], "error": r["error"]} for r in bad],
            **detection,
        )
    finally:
        meta.unpersist()


def _detection_counts(usable: DataFrame) -> dict:
    """Boxes per class and clipped boxes over the usable rows of a detection frame."""
    per_class = usable.select(F.explode(OBJECTS).alias("o")).groupBy(F.col("o.label").alias("label")).count().collect()
    clipped = usable.agg(F.sum(CLIPPED_BOXES)).first()[0]
    classes = {str(r["label"]): int(r["count"]) for r in per_class}
    return {
        "task": "detect",
        "classes": dict(sorted(classes.items())),
        "objects": sum(classes.values()),
        "clipped_boxes": int(clipped or 0),
    }
