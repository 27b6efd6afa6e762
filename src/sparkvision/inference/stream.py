"""Streaming prediction: keep a model labelling image files as they land, exactly once.

:func:`predict_stream` runs a Structured Streaming query over a folder or Hadoop URI
(``readStream`` of the ``binaryFile`` format) and appends each micro-batch's predictions
to a Parquet table, as part ``OUT/batch=<micro-batch id>/`` with the same columns, decode
and per-row errors as batch ``predict`` (see :mod:`sparkvision.inference.predict`).

Exactly once, across restarts: Spark's checkpoint records which files make each
micro-batch before the batch runs, and a restarted query replays an unfinished batch
with the same files. A batch's part is staged and renamed into place whole, and a replay
replaces it, so a file is never lost and never written twice.

Every file is a row: Spark's scan skips empty and unreadable files, so each batch's rows
come from the files the checkpoint lists for it (the file source's log): the scan's, and
an error row for each listed file the scan skipped or that is too large.

For a streaming DataFrame to feed any sparkvision Spark ML stage directly (without the
per-file accounting), :func:`read_image_stream` gives IMAGE_SCHEMA rows.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from sparkvision import storage
from sparkvision.config import DecodeSettings, IngestSettings
from sparkvision.detection.postprocess import DecodeSettings as DetectionSettings
from sparkvision.inference.predict import (
    BATCH,
    PREDICTIONS_MARKER,
    SOURCE_KEY,
    AppendedOutputError,
    LoadedModel,
    PredictionCheckError,
    load_model,
)
from sparkvision.io.schema import ERROR, IMAGE_SCHEMA, PATH
from sparkvision.io.sources import binary_file_reader, describe_binary_batches, glob_base, wanted_paths

log = logging.getLogger(__name__)

#: The ``binaryFile`` format's columns, which a file stream must be given up front.
BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length long, content binary"

_PROCESSING_TIME = re.compile(r"^processing-time=(\d+(?:\.\d+)?)\s*(ms|s|sec|seconds|m|min|minutes)?$")


def parse_trigger(text: str) -> dict[str, Any]:
    """``processing-time=10s``, ``once`` or ``available-now`` as ``DataStreamWriter.trigger`` keywords."""
    text = text.strip().lower()
    if text == "once":
        return {"once": True}
    if text in ("available-now", "availablenow"):
        return {"availableNow": True}
    match = _PROCESSING_TIME.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2) or "s"
        seconds = amount / 1000 if unit == "ms" else amount * 60 if unit.startswith("m") and unit != "ms" else amount
        if seconds <= 0:
            raise ValueError("a processing-time trigger needs a positive interval")
        return {"processingTime": f"{int(round(seconds * 1000))} milliseconds"}
    raise ValueError(f"unknown trigger {text!r}: use processing-time=10s, once or available-now")


def read_image_stream(
    spark: SparkSession,
    source: str,
    ingest: IngestSettings | None = None,
    decode: DecodeSettings | None = None,
    glob: str | None = None,
    max_files_per_trigger: int | None = None,
    probe: str = "header",
) -> DataFrame:
    """A streaming DataFrame of IMAGE_SCHEMA rows for new image files under ``source``.

    Any sparkvision Spark ML stage (``ImagePredictor``, ``ImageFeaturizer``, a fitted
    pipeline) transforms it like a batch frame. Empty and unreadable files, which Spark's
    scan skips, do not appear here; :func:`predict_stream` accounts for them too.
    """
    ingest = ingest or IngestSettings()
    decode = decode or DecodeSettings()
    root = storage.qualify(spark, glob_base(source)).rstrip("/")
    files = _file_stream(spark, root, source, ingest, glob, max_files_per_trigger)
    # Oversized files keep their length and lose their bytes: the row gets a too_large error.
    scanned = files.select(PATH, "length", F.when(F.col("length") <= ingest.max_file_bytes, F.col("content"))
                           .alias("content"))
    return scanned.mapInPandas(partial(describe_binary_batches, root=root, max_bytes=ingest.max_file_bytes,
                                       decode=decode, probe=probe), IMAGE_SCHEMA)


def _file_stream(spark: SparkSession, root: str, source: str, ingest: IngestSettings, glob: str | None,
                 max_files_per_trigger: int | None) -> DataFrame:
    reader = (binary_file_reader(spark.readStream, root, ingest, glob).schema(BINARY_FILE_SCHEMA)
              # Spark ignores files older than a week before the newest one seen (maxFileAge, 7d):
              # photos copied in with their old times kept would be lost. Consider every file.
              .option("maxFileAge", "36500d"))
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", int(max_files_per_trigger))
    return reader.load(source)


def files_of_batch(spark: SparkSession, checkpoint: str, batch_id: int) -> list[str] | None:
    """The files Spark's file source assigned to micro-batch ``batch_id``, as its scans print paths.

    Read from the source's log in the checkpoint (``sources/0/<n>`` and its compacted
    ``<n>.compact`` files: a ``v1`` line, then one JSON object per file with ``path`` and
    ``batchId``); None when the log cannot be read.
    """
    log_dir = f"{checkpoint.rstrip('/')}/sources/0"
    try:
        names = storage.list_dir(log_dir, spark)
    except (OSError, FileNotFoundError) as exc:
        log.warning("cannot read the file source's log under %s: %s", log_dir, exc)
        return None
    wanted = {str(batch_id)}
    # A batch's entries are in its own file, or in the first compacted file at or after it.
    compacted = sorted(int(n.split(".")[0]) for n in names if n.endswith(".compact") and n.split(".")[0].isdigit())
    later = [n for n in compacted if n >= batch_id]
    if later:
        wanted.add(f"{later[0]}.compact")
    paths: set[str] = set()
    found = False
    for name in names:
        if name not in wanted:
            continue
        found = True
        for line in storage.read_text(f"{log_dir}/{name}", spark).splitlines()[1:]:
            if not line.strip():
                continue
            entry = json.loads(line)
            if int(entry.get("batchId", -1)) == batch_id:
                paths.add(storage.spark_path(entry["path"]))
    return sorted(paths) if found else None


@dataclass
class StreamSummary:
    out: str
    checkpoint: str
    model: str
    kind: str
    model_version: str
    trigger: str
    #: This run's micro-batches (a replayed batch counts again) and their rows.
    batches: int = 0
    rows: int = 0
    predicted: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    predicted_classes: dict[str, int] = field(default_factory=dict)
    boxes: int | None = None
    boxes_per_class: dict[str, int] | None = None
    seconds: float = 0.0
    stopped_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, part: dict[str, Any]) -> None:
        self.batches += 1
        for name in ("rows", "predicted", "errors"):
            setattr(self, name, getattr(self, name) + int(part[name]))
        for name in ("error_kinds", "predicted_classes", "boxes_per_class"):
            if part.get(name) is None:
                continue
            merged = dict(getattr(self, name) or {})
            for key, count in part[name].items():
                merged[key] = merged.get(key, 0) + count
            setattr(self, name, dict(sorted(merged.items())))
        if part.get("boxes") is not None:
            self.boxes = (self.boxes or 0) + int(part["boxes"])


class BatchWriter:
    """``foreachBatch`` function: one micro-batch in, one checked part ``OUT/batch=<id>/`` out."""

    def __init__(self, model: LoadedModel, source: str, out: str, checkpoint: str, root: str,
                 ingest: IngestSettings, decode: DecodeSettings, summary: StreamSummary) -> None:
        self.model, self.source, self.out, self.checkpoint, self.root = model, source, out, checkpoint, root
        self.ingest, self.decode, self.summary = ingest, decode, summary

    def __call__(self, files: DataFrame, batch_id: int) -> None:
        spark = files.sparkSession
        listed = files_of_batch(spark, self.checkpoint, batch_id)
        # Metadata of the micro-batch's files (nothing opened): a micro-batch is small enough
        # to decide on the driver, and streaming plans run without adaptive execution, so
        # joins and aggregations here would cost hundreds of tiny shuffle tasks per batch.
        status = {r[PATH]: (r["length"], r["mtime"]) for r in
                  files.select(PATH, "length", F.unix_millis("modificationTime").alias("mtime")).collect()}
        if listed is None:  # the log is unreadable: the scan's rows are all we know of
            listed = sorted(status)
        listed = wanted_paths(listed, self.root, self.ingest)
        if not listed:
            return
        frame = self._rows(spark, files, listed, status)
        keys = spark.createDataFrame(
            [(p, f"{status[p][0]}:{status[p][1]}" if p in status else None) for p in listed],
            f"{PATH} string, {SOURCE_KEY} string")
        keyed = frame.join(F.broadcast(keys), PATH, "left").withColumn(
            SOURCE_KEY, F.coalesce(F.col(SOURCE_KEY), F.concat(F.lit("unlisted:"), F.col("error"))))
        target = f"{self.out}/{BATCH}={batch_id}"
        # A replayed batch (the query stopped after writing it, before committing it) replaces its part.
        with storage.atomic_dir(target, spark, overwrite=True) as staging:
            self.model.written(keyed, keep=(SOURCE_KEY,)).write.parquet(staging)
            part = _part_summary(spark.read.parquet(staging), listed)
        self.summary.add(part)
        log.info("micro-batch %d: %d rows (%d errors) into %s", batch_id, part["rows"], part["errors"], target)

    def _rows(self, spark: SparkSession, files: DataFrame, listed: list[str],
              status: dict[str, tuple[int, int]]) -> DataFrame:
        """IMAGE_SCHEMA rows for ``listed``: the scan's, and error rows for files it skipped or that are too large."""
        limit = self.ingest.max_file_bytes
        describe = partial(describe_binary_batches, root=self.root, max_bytes=limit, decode=self.decode,
                           probe="header")
        scanned = files.where(F.col("length") <= limit)
        if set(status) - set(listed):  # files this source does not read (too deep without --recursive)
            scanned = scanned.where(F.col(PATH).isin(listed))
        rows = scanned.select(PATH, "length", "content").mapInPandas(describe, IMAGE_SCHEMA)
        skipped = [p for p in listed if p not in status or status[p][0] > limit]
        if not skipped:
            return rows
        unread = pd.DataFrame({PATH: skipped, "length": [status[p][0] if p in status else None for p in skipped],
                               "content": [None] * len(skipped)}).astype({"length": "Int64"})
        extra = spark.createDataFrame(unread, f"{PATH} string, length long, content binary")
        return rows.unionByName(extra.mapInPandas(describe, IMAGE_SCHEMA))


def _part_summary(written: DataFrame, listed: list[str]) -> dict[str, Any]:
    """Check a written micro-batch holds each listed file once, and count what it holds (on the driver)."""
    columns = [PATH, ERROR, *(["prediction"] if "prediction" in written.columns else []),
               *([F.col("boxes.label").alias("box_labels")] if "boxes" in written.columns else [])]
    rows = written.select(*columns).collect()
    got, want = Counter(r[PATH] for r in rows), Counter(listed)
    if got != want:
        lost, doubled = sorted(want - got)[:5], sorted(got - want)[:5]
        raise PredictionCheckError(f"micro-batch holds {len(rows)} rows for {len(listed)} files; missing e.g. {lost}, "
                                   f"extra e.g. {doubled}")
    kinds = Counter(r[ERROR].split(":", 1)[0] for r in rows if r[ERROR] is not None)
    part: dict[str, Any] = {"rows": len(rows), "errors": sum(kinds.values()), "error_kinds": dict(sorted(kinds.items()))}
    if "boxes" in written.columns:
        labels = Counter(label for r in rows for label in (r["box_labels"] or []))
        return {**part, "predicted": len(rows) - part["errors"], "predicted_classes": {},
                "boxes": sum(labels.values()), "boxes_per_class": dict(sorted(labels.items()))}
    classes = Counter(r["prediction"] for r in rows if r["prediction"] is not None)
    return {**part, "predicted": sum(classes.values()), "predicted_classes": dict(sorted(classes.items()))}


def start_predict_stream(
    spark: SparkSession,
    model_dir: str | Path,
    source: str,
    out: str,
    checkpoint: str,
    trigger: str = "available-now",
    max_files_per_trigger: int | None = None,
    ingest: IngestSettings | None = None,
    decode: DecodeSettings | None = None,
    glob: str | None = None,
    batch_size: int | None = None,
    detection: DetectionSettings | None = None,
    tta: str | None = None,
) -> tuple[StreamingQuery, StreamSummary]:
    """Start the query of :func:`predict_stream` and return it with the summary its batches fill in.

    For callers that manage the query themselves (``processAllAvailable()``, ``stop()``).
    """
    trigger_options = parse_trigger(trigger)
    ingest = ingest or IngestSettings()
    decode = decode or DecodeSettings()
    model = load_model(model_dir, batch_size, detection, tta)
    out = storage.qualify(spark, out).rstrip("/")
    checkpoint = storage.qualify(spark, checkpoint).rstrip("/")
    root = storage.qualify(spark, glob_base(source)).rstrip("/")
    if not storage.exists(root, spark):
        raise FileNotFoundError(f"{source!r} does not exist")
    _prepare_output(spark, out, checkpoint, model)
    summary = StreamSummary(out=out, checkpoint=checkpoint, model=str(model.model_dir), kind=model.card.kind,
                            model_version=model.version, trigger=trigger)
    writer = BatchWriter(model, source, out, checkpoint, root, ingest, decode, summary)
    query = (_file_stream(spark, root, source, ingest, glob, max_files_per_trigger).writeStream
             .foreachBatch(writer).option("checkpointLocation", checkpoint)
             .queryName(f"sparkvision-predict-{model.version}").trigger(**trigger_options).start())
    return query, summary


def predict_stream(spark: SparkSession, model_dir: str | Path, source: str, out: str, checkpoint: str,
                   trigger: str = "available-now", timeout: float | None = None, **options: Any) -> StreamSummary:
    """Predict the image files under ``source`` as they arrive, appending to ``out``; see the module docstring.

    ``once`` and ``available-now`` return when the files present at the start are done;
    ``processing-time=…`` runs until SIGINT/SIGTERM (or ``timeout`` seconds), stopping
    between batches. ``options``: those of :func:`start_predict_stream`.
    """
    started = time.monotonic()
    query, summary = start_predict_stream(spark, model_dir, source, out, checkpoint, trigger, **options)
    summary.stopped_by = _await(query, timeout, "processingTime" in parse_trigger(trigger))
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _prepare_output(spark: SparkSession, out: str, checkpoint: str, model: LoadedModel) -> None:
    """Refuse an output this stream cannot append to; clear what a killed run of it left staged."""
    marker = f"{out}/{PREDICTIONS_MARKER}"
    if storage.exists(out, spark):
        found = json.loads(storage.read_text(marker, spark)) if storage.exists(marker, spark) else None
        if found is None or found.get("layout") != "appended":
            raise AppendedOutputError(f"{out} exists and is not an appended predictions table; give a new --out")
        if found.get("checkpoint") != checkpoint:
            # Part names are micro-batch ids of one checkpoint: another stream would overwrite them.
            raise AppendedOutputError(f"{out} is written by the stream with checkpoint {found.get('checkpoint')}, "
                                      f"not {checkpoint}; give that --checkpoint or a new --out")
        if (found.get("kind") == "detector") != model.is_detector:
            raise AppendedOutputError(f"{out} holds {found.get('kind')} predictions; a {model.card.kind} model "
                                      "cannot append to it (its columns differ)")
        # The checkpoint is this stream's alone (Spark refuses two queries on it), so staged
        # parts in `out` are a killed run's: its unfinished batch is replayed now.
        for name in storage.list_dir(out, spark):
            if name.startswith(f".{BATCH}=") and ".staging-" in name:
                storage.delete(f"{out}/{name}", spark)
    storage.write_text(marker, model.marker(layout="appended", checkpoint=checkpoint), spark)


def _await(query: StreamingQuery, timeout: float | None, endless: bool) -> str:
    """Wait for ``query``; an endless one stops cleanly on SIGINT/SIGTERM or after ``timeout``."""
    stop_reason: list[str] = []

    def stop(signum: int, _frame: Any) -> None:
        stop_reason.append(signal.Signals(signum).name)
        log.info("%s: stopping the stream after the current micro-batch", stop_reason[-1])

    previous = {}
    if endless:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, stop)
            except ValueError:  # not the main thread: the caller stops the query
                pass
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while query.isActive and not stop_reason:
            if deadline is not None and time.monotonic() >= deadline:
                stop_reason.append("timeout")
                break
            query.awaitTermination(0.5)
        if query.isActive:
            query.stop()
        exception = query.exception()
        if exception is not None:
            raise RuntimeError(f"the stream failed: {str(exception).strip().splitlines()[0]}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stop_reason[0] if stop_reason else "done"
