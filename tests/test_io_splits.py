"""Stratified seeded splits and k-fold: exact per-class shares, no path in two splits, reproducible."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from pyspark.sql import functions as F

from sparkvision.io import assign_folds, assign_splits, train_val_test_split

CLASS_SIZES = {"cat": 100, "dog": 37, "eel": 9, "fox": 1}
N_ROWS = sum(CLASS_SIZES.values()) + 5 + 3  # + unlabelled + duplicate rows


@pytest.fixture(scope="module")
def frame(spark):
    rows = [(f"file:/data/{label}/{i:04d}.jpg", label, i) for label, n in CLASS_SIZES.items() for i in range(n)]
    rows += [(f"file:/data/unlabelled/{i}.jpg", None, i) for i in range(5)]
    # Duplicate rows of the same path (the same file listed twice).
    rows += [("file:/data/cat/0003.jpg", "cat", 1000), ("file:/data/cat/0003.jpg", "cat", 1001),
             ("file:/data/dog/0010.jpg", "dog", 1002)]
    return spark.createDataFrame(rows, "path string, label string, extra int").cache()


def _assignment(rows) -> dict[str, str]:
    by_path: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        by_path[row.path].add(row.split)
    assert all(len(s) == 1 for s in by_path.values()), "a path landed in two splits"
    return {path: splits.pop() for path, splits in by_path.items()}


def test_each_class_gets_its_share_exact_to_rounding_and_duplicates_stay_together(frame):
    fractions = {"train": 0.7, "val": 0.2, "test": 0.1}
    result = assign_splits(frame, fractions, seed=7)
    assert set(result.columns) == {"path", "label", "extra", "split"}
    rows = result.collect()
    assert len(rows) == N_ROWS  # every row kept, duplicates included
    assert len([r for r in rows if r.path == "file:/data/cat/0003.jpg"]) == 3
    assignment = _assignment(rows)  # also: each path, duplicates included, in exactly one split
    labels = {r.path: r.label for r in rows}
    counts = Counter((labels[p], s) for p, s in assignment.items())
    for label, n in {**CLASS_SIZES, None: 5}.items():
        train = int(n * 0.7 + 0.5)  # half-up rounding of the cumulative bounds
        val = int(n * 0.9 + 0.5) - train
        assert (counts[(label, "train")], counts[(label, "val")], counts[(label, "test")]) == (
            train, val, n - train - val), label
    assert counts[("cat", "train")] == 70 and counts[("dog", "val")] == 7 and counts[("fox", "train")] == 1


def test_train_val_test_parts_are_disjoint_and_cover_every_row(frame):
    parts = [part.collect() for part in train_val_test_split(frame, 0.8, 0.1, 0.1, seed=3)]
    assert sum(len(p) for p in parts) == N_ROWS
    assert all("split" not in p[0].asDict() for p in parts)
    paths = [{r.path for r in p} for p in parts]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    # Per class (cat 100, dog 37, eel 9, fox 1, unlabelled 5): train round(.8n), val round(.9n) - train.
    assert [len(p) for p in paths] == [80 + 30 + 7 + 1 + 4, 10 + 3 + 1 + 0 + 1, 10 + 4 + 1 + 0 + 0]


def test_same_seed_same_split_other_seed_other_split(frame):
    fractions = {"train": 0.8, "test": 0.2}
    first = _assignment(assign_splits(frame, fractions, seed=11).select("path", "split").collect())
    # Same rows in another order and partitioning: the assignment must not move.
    shuffled = frame.repartition(3, F.col("extra")).orderBy(F.rand(5))
    assert _assignment(assign_splits(shuffled, fractions, seed=11).select("path", "split").collect()) == first
    other = _assignment(assign_splits(frame, fractions, seed=12).select("path", "split").collect())
    assert other != first
    assert Counter(other.values()) == Counter(first.values())  # same sizes, other members


def test_fractions_are_validated(frame):
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(frame, {"train": 0.8, "test": 0.3})
    with pytest.raises(ValueError, match="non-negative"):
        assign_splits(frame, {"train": 1.2, "test": -0.2})
    with pytest.raises(ValueError, match="at least one"):
        assign_splits(frame, {})
    with pytest.raises(ValueError, match="k >= 2"):
        assign_folds(frame, 1)


def test_k_folds_are_disjoint_covering_and_balanced_per_class(frame):
    rows = assign_folds(frame, 5, seed=2).select("path", "label", "fold").collect()
    assert len(rows) == N_ROWS
    fold_of: dict[str, set[int]] = defaultdict(set)
    label_of = {}
    for row in rows:
        fold_of[row.path].add(row.fold)
        label_of[row.path] = row.label
    assert all(len(f) == 1 for f in fold_of.values())
    per_class = Counter((label_of[p], next(iter(f))) for p, f in fold_of.items())
    assert {k for _, k in per_class} == set(range(5))
    for label, n in CLASS_SIZES.items():
        sizes = [per_class[(label, k)] for k in range(5)]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1, (label, sizes)


def test_sample_per_class_keeps_at_most_n_of_each_class_chosen_by_the_seed(frame):
    from sparkvision.io.splits import sample_per_class

    picked = sample_per_class(frame, 5, seed=3).collect()
    assert Counter(r.label for r in picked) == {"cat": 5, "dog": 5, "eel": 5, "fox": 1, None: 5}
    assert set(picked[0].asDict()) == {"path", "label", "extra"}
    again = {r.path for r in sample_per_class(frame, 5, seed=3).collect()}
    assert again == {r.path for r in picked}  # the same rows for the same seed
    other = {r.path for r in sample_per_class(frame, 5, seed=4).collect() if r.label == "cat"}
    assert other != {r.path for r in picked if r.label == "cat"}
    with pytest.raises(ValueError, match="at least 1"):
        sample_per_class(frame, 0)
