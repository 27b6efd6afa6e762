"""Stratified, seeded splits that keep every class's proportion and never share a path.

Assignment is a pure function of (path, seed) within each class: rows are ordered by
a 64-bit hash of the path salted with the seed, and the first ``round(n * fraction)``
rows of each class go to the first split, and so on. The same seed gives the same
split on any cluster and partitioning; a path seen twice (duplicate rows) always
lands in the same split because the assignment is computed per distinct path.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from sparkvision.io.schema import LABEL, PATH

SPLIT = "split"
FOLD = "fold"


def _ranked(frame: DataFrame, label_col: str, seed: int) -> DataFrame:
    """Distinct (path, label) with rank and class size, ordered by a seeded hash."""
    paths = frame.select(PATH, label_col).dropDuplicates([PATH])
    order = Window.partitionBy(label_col).orderBy(F.xxhash64(F.col(PATH), F.lit(seed)), F.col(PATH))
    by_class = Window.partitionBy(label_col)
    return paths.select(
        PATH,
        (F.row_number().over(order) - 1).alias("_rank"),
        F.count(F.lit(1)).over(by_class).alias("_n"),
    )


def assign_splits(
    frame: DataFrame,
    fractions: dict[str, float],
    seed: int = 42,
    label_col: str = LABEL,
) -> DataFrame:
    """``frame`` with a ``split`` column (a key of ``fractions``), stratified by ``label_col``."""
    if not fractions:
        raise ValueError("fractions must name at least one split")
    if any(f < 0 for f in fractions.values()):
        raise ValueError(f"fractions must be non-negative, got {fractions}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {total} from {fractions}")
    ranked = _ranked(frame, label_col, seed)
    bound = F.lit(0.0)
    split_expr = None
    names = list(fractions)
    for name in names[:-1]:
        bound = bound + F.lit(fractions[name])
        cond = F.col("_rank") < F.round(F.col("_n") * bound)
        split_expr = F.when(cond, name) if split_expr is None else split_expr.when(cond, name)
    split_expr = F.lit(names[-1]) if split_expr is None else split_expr.otherwise(names[-1])
    assigned = ranked.select(PATH, split_expr.alias(SPLIT))
    return frame.join(assigned, PATH, "left")


def train_val_test_split(
    frame: DataFrame,
    train: float = 0.8,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 42,
    label_col: str = LABEL,
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Three DataFrames with the stated shares of every class (the split column dropped)."""
    assigned = assign_splits(frame, {"train": train, "val": val, "test": test}, seed, label_col).cache()
    return tuple(  # type: ignore[return-value]
        assigned.where(F.col(SPLIT) == name).drop(SPLIT) for name in ("train", "val", "test")
    )


def sample_per_class(frame: DataFrame, per_class: int, seed: int = 42, label_col: str = LABEL) -> DataFrame:
    """At most ``per_class`` rows of each class, chosen by a seeded hash of the path (the same rows on any cluster)."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    order = Window.partitionBy(label_col).orderBy(F.xxhash64(F.col(PATH), F.lit(seed)), F.col(PATH))
    return frame.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= per_class).drop("_rank")


def assign_folds(frame: DataFrame, k: int, seed: int = 42, label_col: str = LABEL) -> DataFrame:
    """``frame`` with a ``fold`` column in 0..k-1; each class is dealt round-robin over folds."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    ranked = _ranked(frame, label_col, seed)
    folds = ranked.select(PATH, (F.col("_rank") % k).cast("int").alias(FOLD))
    return frame.join(folds, PATH, "left")
