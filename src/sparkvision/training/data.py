"""Training data: Spark writes Parquet image datasets, each rank reads its own shard with pyarrow.

The driver never holds the images: a source that is not yet a sparkvision dataset
(a folder, a built-in name, a URI of image files) is written to a dataset by Spark
(:func:`prepare_sources`), split into train/val/test parts there when fractions are
asked for. Each rank then reads the dataset's small columns (path, label, error),
orders the usable rows by path, takes every K-th row from its rank on, and reads and
decodes only those rows' bytes, with the model's own :class:`ImagePreprocessor`.

Ordering by path makes a rank's shard a function of the dataset's content alone, not
of how Spark laid out the files, and interleaving gives every rank a sample of every
class even when the rows are stored class by class. A rank keeps its shard decoded
in memory as uint8 (Fashion-MNIST: 47 MB for all 60k rows), so epochs after the first
cost no decoding. Per-epoch order is a seeded permutation of (seed, epoch, rank).
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sparkvision import storage
from sparkvision.config import DecodeSettings, PreprocessConfig
from sparkvision.preprocess import ImagePreprocessor

log = logging.getLogger(__name__)

SMALL_COLUMNS = ["path", "label", "error"]
DECODE_CHUNK = 512


def parquet_files(uri: str) -> tuple[pafs.FileSystem, list[str]]:
    """The dataset's Parquet part files, sorted; Spark's ``_*`` and ``.*`` side files skipped."""
    fs, root = storage.arrow_filesystem(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return fs, [root]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"training dataset {uri} does not exist")
    files = []
    for entry in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = posixpath.relpath(entry.path, root)
        if entry.type == pafs.FileType.File and entry.path.endswith(".parquet") and not any(
            part.startswith(("_", ".")) for part in rel.split("/")
        ):
            files.append(entry.path)
    if not files:
        raise FileNotFoundError(f"{uri} holds no Parquet files")
    return fs, sorted(files)


@dataclass
class DatasetIndex:
    """The small columns of every row, and where each row's bytes are stored."""

    uri: str
    files: list[str]
    paths: np.ndarray  # object (N,)
    labels: np.ndarray  # object (N,)
    errors: np.ndarray  # object (N,)
    file_index: np.ndarray  # int32 (N,)
    row_group: np.ndarray  # int32 (N,)
    row_in_group: np.ndarray  # int64 (N,)

    @property
    def rows(self) -> int:
        return len(self.paths)

    def usable(self, class_index: dict[str, int]) -> np.ndarray:
        """Positions of rows with no error and a known label, ordered by path."""
        known = np.fromiter((e is None and lab in class_index for e, lab in zip(self.errors, self.labels, strict=True)),
                            dtype=bool, count=self.rows)
        rows = np.flatnonzero(known)
        return rows[np.argsort(self.paths[rows].astype(str), kind="stable")]

    def skipped(self, class_index: dict[str, int]) -> dict[str, int]:
        """Rows that cannot be trained on, by reason (error kind, no label, unknown label)."""
        counts: Counter[str] = Counter()
        for error, label in zip(self.errors, self.labels, strict=True):
            if error is not None:
                counts[str(error).split(":", 1)[0]] += 1
            elif label is None:
                counts["no_label"] += 1
            elif label not in class_index:
                counts["unknown_label"] += 1
        return dict(counts)

    def class_counts(self) -> dict[str, int]:
        """Rows without errors per label (nulls left out)."""
        counts = Counter(lab for e, lab in zip(self.errors, self.labels, strict=True) if e is None and lab is not None)
        return dict(sorted(counts.items()))


def read_index(uri: str) -> DatasetIndex:
    fs, files = parquet_files(uri)
    paths, labels, errors, fidx, rgs, rows_in = [], [], [], [], [], []
    for i, path in enumerate(files):
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            for g in range(parquet.num_row_groups):
                table = parquet.read_row_group(g, columns=SMALL_COLUMNS)
                n = table.num_rows
                paths.extend(table.column("path").to_pylist())
                labels.extend(table.column("label").to_pylist())
                errors.extend(table.column("error").to_pylist())
                fidx.append(np.full(n, i, dtype=np.int32))
                rgs.append(np.full(n, g, dtype=np.int32))
                rows_in.append(np.arange(n, dtype=np.int64))

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def objects(values: list[Any]) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    return DatasetIndex(uri, files, objects(paths), objects(labels), objects(errors), cat(fidx, np.int32),
                        cat(rgs, np.int32), cat(rows_in, np.int64))


def shard_rows(usable: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s rows: every ``world``-th usable row, from position ``rank``."""
    return usable[rank::world]


def read_contents(index: DatasetIndex, rows: np.ndarray) -> list[bytes | None]:
    """The encoded bytes of ``rows`` (dataset positions), in that order; only their row groups are read."""
    return read_column(index, rows, "content")


def read_column(index: DatasetIndex, rows: np.ndarray, column: str) -> list[Any]:
    """One column's values of ``rows`` (dataset positions), in that order; only their row groups are read."""
    fs, _ = storage.arrow_filesystem(index.uri)
    out: list[bytes | None] = [None] * len(rows)
    keys = index.file_index[rows].astype(np.int64) * 1_000_000 + index.row_group[rows]
    order = np.argsort(keys, kind="stable")
    boundaries = np.flatnonzero(np.diff(keys[order])) + 1
    handles: dict[int, pq.ParquetFile] = {}
    streams = []
    try:
        for group in np.split(order, boundaries):
            if not len(group):
                continue
            file_i = int(index.file_index[rows[group[0]]])
            if file_i not in handles:
                stream = fs.open_input_file(index.files[file_i])
                streams.append(stream)
                handles[file_i] = pq.ParquetFile(stream)
            table = handles[file_i].read_row_group(int(index.row_group[rows[group[0]]]), columns=[column])
            values = table.column(column).take(pa.array(index.row_in_group[rows[group]])).to_pylist()
            for position, value in zip(group, values, strict=True):
                out[position] = value
            del table
    finally:
        for stream in streams:
            stream.close()
    return out


@dataclass
class Shard:
    """One rank's decoded rows: uint8 NHWC images and int64 labels."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    #: Rows of this shard whose bytes did not decode, by error kind.
    decode_errors: dict[str, int] = field(default_factory=dict)
    #: Rows of the whole dataset that no rank trains on (error at ingest, no or unknown
    #: label), by reason: the same on every rank.
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def load_shard(
    index: DatasetIndex,
    classes: list[str],
    preprocess: PreprocessConfig,
    rank: int,
    world: int,
    decode: DecodeSettings | None = None,
    progress: TextIO | None = None,
    desc: str = "decode",
) -> Shard:
    """Read and decode rank ``rank``'s shard of ``index``'s dataset."""
    class_index = {c: i for i, c in enumerate(classes)}
    rows = shard_rows(index.usable(class_index), rank, world)
    preprocessor = ImagePreprocessor(preprocess, decode)
    height, width = preprocess.size
    images = np.empty((len(rows), height, width, preprocess.channels), dtype=np.uint8)
    labels = np.empty(len(rows), dtype=np.int64)
    paths: list[str] = []
    errors: Counter[str] = Counter()
    filled = 0
    bar = _bar(len(rows), desc, progress)
    for start in range(0, len(rows), 8 * DECODE_CHUNK):
        chunk = rows[start: start + 8 * DECODE_CHUNK]
        contents = read_contents(index, chunk)
        for sub in range(0, len(chunk), DECODE_CHUNK):
            part = chunk[sub: sub + DECODE_CHUNK]
            pixels, ok, row_errors = preprocessor.load_uint8(contents[sub: sub + DECODE_CHUNK])
            images[filled: filled + len(ok)] = pixels
            labels[filled: filled + len(ok)] = [class_index[index.labels[r]] for r in part[ok]]
            paths.extend(index.paths[r] for r in part[ok])
            filled += len(ok)
            errors.update(str(e).split(":", 1)[0] for e in row_errors if e is not None)
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()
    if errors:
        log.warning("rank %d: %d rows of %s did not decode (%s); they are left out of training",
                    rank, sum(errors.values()), index.uri, dict(errors))
    return Shard(images[:filled], labels[:filled], paths, dict(errors), index.skipped(class_index))


def _bar(total: int, desc: str, progress: TextIO | None):
    if progress is None:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=progress, leave=False, dynamic_ncols=True)


def epoch_order(n: int, padded: int, seed: int, epoch: int, rank: int) -> np.ndarray:
    """This epoch's sample order for a shard of ``n``, wrapped around to ``padded`` entries
    (every rank must take the same number of steps; short shards repeat a few rows,
    as torch's DistributedSampler does)."""
    rng = np.random.default_rng([seed, epoch, rank, 0x5EED])
    order = rng.permutation(n)
    if padded > n:
        order = np.concatenate([order] * math.ceil(padded / max(n, 1)))[:padded]
    return order


def augment_rng(seed: int, epoch: int, rank: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, rank, 0xA06])


# -- driver side --------------------------------------------------------------------------

@dataclass
class PreparedData:
    """Dataset URIs the ranks read, and what they were made from."""

    train: str
    val: str | None
    test: str | None
    sources: dict[str, Any]
    written: list[str] = field(default_factory=list)


def prepare_sources(
    spark,
    train_src: str,
    val_src: str | None,
    test_src: str | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    work_dir: str,
    source_reader=None,
) -> PreparedData:
    """Make every part a Parquet dataset the ranks can read, writing with Spark where needed.

    A part that is already a sparkvision dataset is read where it is. Splits carved out
    of the training source use :func:`sparkvision.io.assign_splits` (stratified, seeded).
    A work directory from an earlier attempt with the same inputs is reused, so
    ``--resume`` does not rewrite the data.
    """
    from pyspark.sql import functions as F

    from sparkvision.io import assign_splits, load_images, write_dataset
    from sparkvision.io.dataset import is_dataset

    read = source_reader or (lambda src: load_images(spark, src, probe="header"))
    fractions = {
        "val": val_fraction if val_src is None else 0.0,
        "test": test_fraction if test_src is None else 0.0,
    }
    fractions = {k: v for k, v in fractions.items() if v > 0}
    sources = {"train": train_src, "val": val_src, "test": test_src, "fractions": fractions, "seed": seed}
    work = work_dir.rstrip("/")
    stamp = work + "/prepared.json"
    if storage.exists(stamp, spark):
        previous = json.loads(storage.read_text(stamp, spark))
        if previous.get("sources") == sources and all(is_dataset(spark, u) for u in previous["written"]):
            log.info("reusing the datasets prepared in %s", work)
            p = previous["parts"]
            return PreparedData(p["train"], p.get("val"), p.get("test"), sources, previous["written"])

    def as_dataset(src: str) -> bool:
        return is_dataset(spark, src) or src.rstrip("/").endswith(".parquet")

    parts: dict[str, str | None] = {"train": None, "val": None, "test": None}
    written: list[str] = []
    if fractions or not as_dataset(train_src):
        frame = read(train_src)
        if fractions:
            shares = {"train": 1.0 - sum(fractions.values()), **fractions}
            frame = assign_splits(frame, shares, seed=seed).persist()
            for name in shares:
                uri = f"{work}/{name}"
                log.info("writing the %s part of %s to %s", name, train_src, uri)
                write_dataset(spark, frame.where(F.col("split") == name), uri, overwrite=True,
                              source=f"{train_src} ({name} split, seed {seed})")
                parts[name] = uri
                written.append(uri)
            frame.unpersist()
        else:
            uri = f"{work}/train"
            log.info("writing %s to the dataset %s", train_src, uri)
            write_dataset(spark, frame, uri, overwrite=True, source=train_src)
            parts["train"] = uri
            written.append(uri)
    else:
        parts["train"] = train_src
    for name, src in (("val", val_src), ("test", test_src)):
        if src is None:
            continue
        if as_dataset(src):
            parts[name] = src
        else:
            uri = f"{work}/{name}"
            log.info("writing %s to the dataset %s", src, uri)
            write_dataset(spark, read(src), uri, overwrite=True, source=src)
            parts[name] = uri
            written.append(uri)
    storage.write_text(stamp, json.dumps({"sources": sources, "parts": parts, "written": written}, indent=2), spark)
    return PreparedData(parts["train"], parts["val"], parts["test"], sources, written)  # type: ignore[arg-type]
