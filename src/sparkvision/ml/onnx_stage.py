"""Running an ONNX image model inside Spark tasks: the machinery every sparkvision ML stage shares.

* The model is a :class:`~sparkvision.models.runner.ModelSource`, resolved on the
  driver from the registry, a model directory, or bytes embedded in a saved stage.
* The bytes reach executors through :func:`ship_model`, once per session and SHA-256: a
  Spark broadcast on a classic session, a session artifact over Spark Connect, so a real
  cluster needs no shared filesystem and no cache on its workers. Each Python task
  runs them through a :mod:`sparkvision.models.runner` runner, whose ONNX Runtime
  session is built once per model per worker and reused by every later batch and task.
* :func:`run_model` adds the model's outputs to a DataFrame through one Arrow-batched
  scalar-iterator pandas UDF that sees only the image bytes (or the pixels of Spark's
  ``image`` source, :mod:`sparkvision.io.image_source`): the other columns never
  leave the JVM. Each row gets either outputs or an ``error``; nothing is dropped, and
  an error already on the row is kept (its bytes are not even decoded).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark import Accumulator
from pyspark.broadcast import Broadcast
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import (
    ArrayType,
    DataType,
    DoubleType,
    FloatType,
    StringType,
    StructField,
    StructType,
)

from sparkvision.config import PreprocessConfig
from sparkvision.io.image_source import is_image_struct, model_inputs, struct_pixels
from sparkvision.models.runner import ClassifierRunner, ModelSource
from sparkvision.session import is_connect

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- driver: shipping the model

ModelBytes = Callable[[], bytes]
"""A picklable loader of a model's bytes on an executor, called only by a process that has not
built that model's session yet (runners cache sessions per digest, one per Python worker)."""

_SHIPPED: dict[tuple[str, str], ModelBytes] = {}
_SHIP_LOCK = threading.Lock()


class _FromBroadcast:
    """Classic sessions: the bytes as a Spark broadcast, fetched once per executor."""

    def __init__(self, broadcast: Broadcast) -> None:
        self.broadcast = broadcast

    def __call__(self) -> bytes:
        return self.broadcast.value


class _FromArtifact:
    """Spark Connect: the bytes as a session artifact (``spark.addArtifacts(file=True)``), which Spark
    copies to every executor's working files; read from there by ``SparkFiles``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self) -> bytes:
        from pyspark import SparkFiles

        with open(SparkFiles.get(self.name), "rb") as handle:
            return handle.read()


def ship_model(spark: SparkSession, source: ModelSource) -> ModelBytes:
    """Make ``source``'s bytes reachable from every executor of ``spark``, once per (session, digest).

    The one place that does it, for every stage, SQL function and tiling job: a broadcast on a
    classic session, an artifact over Spark Connect (which has neither SparkContext nor broadcasts).
    """
    connect = is_connect(spark)
    key = (spark.session_id if connect else spark.sparkContext.applicationId, source.digest)
    with _SHIP_LOCK:
        found = _SHIPPED.get(key)
        if found is not None:
            return found
        if connect:
            name = f"sparkvision-model-{source.digest}.onnx"
            with tempfile.TemporaryDirectory(prefix="sparkvision-ship-") as folder:
                path = os.path.join(folder, name)
                with open(path, "wb") as handle:
                    handle.write(source.data)
                spark.addArtifacts(path, file=True)
            found = _FromArtifact(name)
        else:
            found = _FromBroadcast(spark.sparkContext.broadcast(source.data))
        _SHIPPED[key] = found
        log.debug("shipped ONNX model %s (%s, %.1f MB) as %s", source.name, source.digest[:12],
                  len(source.data) / 1e6, "an artifact" if connect else "a broadcast")
        return found


# ---------------------------------------------------------------- executors: the kernel


class OutputMapper:
    """Which runner results a stage adds, as result columns.

    Subclasses define ``role`` (the graph output they read), ``fields`` (the result
    struct's fields, error excluded) and ``__call__(runner, contents)`` giving every
    field plus ``error``, one value per input. They are pickled to executors.
    """

    role: str
    fields: list[StructField]

    def make_runner(self, data: Callable[[], bytes], spec: KernelSpec) -> Any:
        """The runner this mapper reads (a classifier's; a detector's mapper makes a DetectorRunner)."""
        return ClassifierRunner(data, spec.preprocess, outputs=spec.outputs, labels=spec.labels, name=spec.name,
                                key=spec.digest, threads=spec.threads, batch_size=spec.batch_size, tta=spec.tta)

    def __call__(self, runner: ClassifierRunner, contents: list[Any]) -> dict[str, list[Any]]:
        raise NotImplementedError


class RawOutput(OutputMapper):
    """The output vector itself (features or logits) as array<float>."""

    def __init__(self, name: str = "values", role: str = "features") -> None:
        self.name = name
        self.role = role
        self.fields = [StructField(name, ArrayType(FloatType(), False), True)]

    def __call__(self, runner: ClassifierRunner, contents: list[Any]) -> dict[str, list[Any]]:
        rows = runner.vectors(contents, self.role)
        return {self.name: rows.per_input(list(rows.values.astype(np.float32, copy=False))), "error": rows.errors}


TOP_K_TYPE = ArrayType(
    StructType([StructField("label", StringType(), False), StructField("probability", DoubleType(), False)]), False
)


class ClassProbabilities(OutputMapper):
    """Softmax over logits: the top-1 label, optionally the full probability vector (in
    ``labels`` order) and the top-k (label, probability) pairs, most probable first."""

    role = "logits"

    def __init__(self, labels: Sequence[str], probability: bool = True, top_k: int = 0) -> None:
        self.probability = probability
        self.top_k = min(top_k, len(labels))
        self.fields = [StructField("prediction", StringType(), True)]
        if probability:
            self.fields.append(StructField("probability", ArrayType(DoubleType(), True), True))
        if self.top_k:
            self.fields.append(StructField("top_k", TOP_K_TYPE, True))

    def __call__(self, runner: ClassifierRunner, contents: list[Any]) -> dict[str, list[Any]]:
        rows = runner.predict_proba(contents)
        result = {"prediction": rows.per_input(runner.top1_of(rows.values))}
        if self.probability:
            result["probability"] = rows.per_input(list(rows.values))
        if self.top_k:
            result["top_k"] = rows.per_input(runner.top_k_of(rows.values, self.top_k))
        result["error"] = rows.errors
        return result


@dataclass(frozen=True)
class KernelSpec:
    """What a Python worker needs, besides the broadcast bytes, to run the model on image bytes."""

    name: str
    digest: str
    preprocess: PreprocessConfig
    outputs: dict[str, str]
    labels: tuple[str, ...] | None
    batch_size: int
    threads: int
    mapper: OutputMapper
    #: Test-time augmentation of a classifier runner ("none" or "flip").
    tta: str = "none"

    def runner(self, data: Callable[[], bytes]) -> Any:
        return self.mapper.make_runner(data, self)


def _result_type(mapper: OutputMapper) -> StructType:
    return StructType([*mapper.fields, StructField("error", StringType(), True)])


def make_udf(model: ModelBytes, spec: KernelSpec, counter: Accumulator | None,
             field: str | None = None) -> Callable[[Column], Column]:
    """The scalar-iterator pandas UDF: bytes (or image structs) in, a struct of result columns and ``error`` out
    (only the result column ``field``, when given: what a SQL function returning a vector needs)."""
    result_type = _result_type(spec.mapper)
    if field is not None:
        result_type = result_type[field].dataType

    def results(batches: Iterator[pd.Series]) -> Iterator[dict[str, list[Any]]]:
        runner = spec.runner(model)  # its session is built on first use, the bytes read then
        for contents in batches:
            columns = spec.mapper(runner, model_inputs(contents))
            if counter is not None:
                counter.add(len(contents))
            yield columns

    def run(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        return (pd.DataFrame(columns) for columns in results(batches))

    def run_field(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        return (pd.Series(columns[field], dtype=object) for columns in results(batches))

    # Non-deterministic on purpose: otherwise the optimizer may push a filter on the
    # result (e.g. "error is null") below the projection by inlining the UDF into it,
    # and the CNN would run twice per row.
    return pandas_udf(run if field is None else run_field, result_type).asNondeterministic()  # type: ignore[call-overload]


def run_model(
    frame: DataFrame,
    source: ModelSource,
    input_col: str,
    error_col: str,
    mapper: OutputMapper,
    columns: dict[str, tuple[str, Callable[[Column], Column] | None]],
    batch_size: int,
    threads: int,
    counter: Accumulator | None = None,
    tta: str = "none",
) -> DataFrame:
    """``frame`` with the model's result columns added and ``error_col`` set or kept.

    ``columns`` maps each mapper field to (output column name, optional conversion);
    an empty name leaves that field out. Rows that already have an error are not
    decoded: their bytes are passed as null and their original error is kept.
    """
    if input_col not in frame.columns:
        raise ValueError(f"input column {input_col!r} not found; the DataFrame has {frame.columns}")
    input_type: DataType = frame.schema[input_col].dataType
    image_struct = is_image_struct(input_type)
    if input_type.typeName() != "binary" and not image_struct:
        raise ValueError(f"input column {input_col!r} must hold encoded image bytes (binary) or Spark's image struct "
                         f"(spark.read.format('image')), not {input_type}")
    wanted = {name: conv for field_name, (name, conv) in columns.items() if name}
    clashes = [name for name in wanted if name in frame.columns and name != error_col]
    if clashes:
        raise ValueError(f"output column(s) {clashes} already exist; choose other names")
    spark = frame.sparkSession
    model = ship_model(spark, source)
    source.output(mapper.role)  # on the driver: a missing output fails here, not in every task
    spec = KernelSpec(source.name, source.digest, source.preprocess, dict(source.outputs), source.labels,
                      batch_size, threads, mapper, tta)
    udf = make_udf(model, spec, counter)
    has_error = error_col in frame.columns
    image = struct_pixels(F.col(input_col)) if image_struct else F.col(input_col)
    content = F.when(F.col(error_col).isNull(), image) if has_error else image
    tmp = f"__sparkvision_{uuid.uuid4().hex[:8]}"
    staged = frame.withColumn(tmp, udf(content))
    result = F.col(f"{tmp}.error")
    error = F.coalesce(F.col(error_col), result) if has_error else result
    keep = [F.col(c) if c != error_col else error.alias(error_col) for c in frame.columns]
    added = []
    for field_name, (name, conv) in columns.items():
        if not name:
            continue
        value = F.col(f"{tmp}.{field_name}")
        added.append((conv(value) if conv else value).alias(name))
    if not has_error:
        keep.append(error.alias(error_col))
    return staged.select(*keep, *added)
