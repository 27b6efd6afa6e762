"""Running an ONNX image model inside Spark tasks: the machinery every sparkvision ML stage shares.

* :class:`ModelSource`: an ONNX graph's bytes with its preprocessing, input/output names
  and labels, resolved on the driver from the registry, a model directory, or bytes
  embedded in a saved stage.
* The bytes reach executors as a Spark broadcast keyed by their SHA-256, so a real
  cluster needs no shared filesystem and no cache on its workers; each Python worker
  builds one ONNX Runtime session per model (``models.runtime.cached_model``) and
  reuses it for every later batch and task.
* :func:`run_model` adds the model's outputs to a DataFrame through one Arrow-batched
  scalar-iterator pandas UDF that sees only the image bytes: the other columns never
  leave the JVM. Each row gets either outputs or an ``error``; nothing is dropped, and
  an error already on the row is kept (its bytes are not even decoded).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark import Accumulator, SparkContext
from pyspark.broadcast import Broadcast
from pyspark.sql import Column, DataFrame
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
from sparkvision.io.errors import ErrorKind, ImageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """An ONNX graph and everything needed to feed it and read its outputs."""

    name: str
    data: bytes = field(repr=False)
    preprocess: PreprocessConfig
    input_name: str = "input"
    #: Role ("features", "logits") -> the graph's output name.
    outputs: dict[str, str] = field(default_factory=lambda: {"logits": "logits"})
    labels: tuple[str, ...] | None = None
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", hashlib.sha256(self.data).hexdigest())

    def output(self, role: str) -> str:
        if role not in self.outputs:
            raise ValueError(f"model {self.name!r} has no {role!r} output; it has {sorted(self.outputs)}")
        return self.outputs[role]

    def output_size(self, role: str) -> int:
        """Length of one row of an output, from the graph's declared shape."""
        import onnx

        name = self.output(role)
        graph = onnx.load_from_string(self.data).graph
        for out in graph.output:
            if out.name == name:
                dims = out.type.tensor_type.shape.dim
                if dims and dims[-1].dim_value:
                    return int(dims[-1].dim_value)
        raise ValueError(f"model {self.name!r} does not declare the size of its {role!r} output")

    def describe(self) -> dict[str, Any]:
        """JSON-able description (everything but the bytes), for saved stages."""
        return {
            "name": self.name,
            "preprocess": self.preprocess.to_dict(),
            "input_name": self.input_name,
            "outputs": dict(self.outputs),
            "labels": list(self.labels) if self.labels else None,
            "digest": self.digest,
        }

    @classmethod
    def from_description(cls, data: bytes, described: dict[str, Any]) -> ModelSource:
        source = cls(
            name=described["name"], data=data, preprocess=PreprocessConfig.from_dict(described["preprocess"]),
            input_name=described.get("input_name", "input"), outputs=dict(described["outputs"]),
            labels=tuple(described["labels"]) if described.get("labels") else None,
        )
        if described.get("digest") and described["digest"] != source.digest:
            raise ValueError(f"embedded ONNX model {source.name!r} does not match its recorded digest")
        return source


_FILE_CACHE: dict[tuple[str, int, int], bytes] = {}
_FILE_LOCK = threading.Lock()


def _read_bytes(path: str | Path) -> bytes:
    """File bytes, remembered per (path, size, mtime) so repeated transforms do not re-read."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    with _FILE_LOCK:
        if key not in _FILE_CACHE:
            if len(_FILE_CACHE) > 8:
                _FILE_CACHE.clear()
            _FILE_CACHE[key] = resolved.read_bytes()
        return _FILE_CACHE[key]


def from_registry(name: str) -> ModelSource:
    """A registered backbone (exported to ONNX once and cached, or the user's ONNX file)."""
    from sparkvision.models import get_spec
    from sparkvision.models.onnx_export import registered_onnx

    spec = get_spec(name)
    path = registered_onnx(name)
    outputs = dict(spec.output_names) if spec.is_onnx else {"features": "features", "logits": "logits"}
    return ModelSource(
        name=name, data=_read_bytes(path), preprocess=spec.preprocess, input_name=spec.input_name,
        outputs=outputs, labels=spec.labels,
    )


def from_model_dir(model_dir: str | Path) -> ModelSource:
    """The ``model.onnx`` of a sparkvision model directory, with its card's labels and preprocessing."""
    from sparkvision.models.model_dir import load_card, onnx_path

    card = load_card(model_dir)
    path = onnx_path(model_dir, card)
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    input_name = graph.input[0].name
    names = [o.name for o in graph.output]
    if "logits" not in names:
        raise ValueError(f"{path} has no output named 'logits' (outputs: {names}); see sparkvision.models.model_dir")
    outputs = {"logits": "logits", **({"features": "features"} if "features" in names else {})}
    return ModelSource(
        name=card.name, data=_read_bytes(path), preprocess=card.preprocess, input_name=input_name,
        outputs=outputs, labels=tuple(card.labels),
    )


# ---------------------------------------------------------------- driver: broadcasts

_BROADCASTS: dict[tuple[str, str], Broadcast] = {}
_BROADCAST_LOCK = threading.Lock()


def broadcast_model(sc: SparkContext, source: ModelSource) -> Broadcast:
    """One broadcast of the model bytes per (application, digest), shared by every stage using it."""
    key = (sc.applicationId, source.digest)
    with _BROADCAST_LOCK:
        found = _BROADCASTS.get(key)
        if found is None:
            found = sc.broadcast(source.data)
            _BROADCASTS[key] = found
            log.debug("broadcast ONNX model %s (%s, %.1f MB)", source.name, source.digest[:12], len(source.data) / 1e6)
        return found


# ---------------------------------------------------------------- executors: the kernel


class OutputMapper:
    """Turns a batch of raw model outputs (ok rows only) into result columns.

    Subclasses define ``fields`` (the result struct's fields, error excluded) and
    ``__call__(outputs) -> {field: per-row values}``. They are pickled to executors.
    """

    fields: list[StructField]

    def __call__(self, outputs: np.ndarray) -> dict[str, list[Any]]:
        raise NotImplementedError


class RawOutput(OutputMapper):
    """The output vector itself (features or logits) as array<float>."""

    def __init__(self, name: str = "values") -> None:
        self.name = name
        self.fields = [StructField(name, ArrayType(FloatType(), False), True)]

    def __call__(self, outputs: np.ndarray) -> dict[str, list[Any]]:
        return {self.name: list(outputs.astype(np.float32, copy=False))}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


TOP_K_TYPE = ArrayType(
    StructType([StructField("label", StringType(), False), StructField("probability", DoubleType(), False)]), False
)


class ClassProbabilities(OutputMapper):
    """Softmax over logits: the top-1 label, optionally the full probability vector (in
    ``labels`` order) and the top-k (label, probability) pairs, most probable first."""

    def __init__(self, labels: Sequence[str], probability: bool = True, top_k: int = 0) -> None:
        self.labels = list(labels)
        self.probability = probability
        self.top_k = min(top_k, len(self.labels))
        self.fields = [StructField("prediction", StringType(), True)]
        if probability:
            self.fields.append(StructField("probability", ArrayType(DoubleType(), True), True))
        if self.top_k:
            self.fields.append(StructField("top_k", TOP_K_TYPE, True))

    def __call__(self, outputs: np.ndarray) -> dict[str, list[Any]]:
        if outputs.shape[1] != len(self.labels):
            raise ImageError(
                ErrorKind.MODEL, f"the model gives {outputs.shape[1]} scores but has {len(self.labels)} labels"
            )
        probs = softmax(outputs)
        result: dict[str, list[Any]] = {"prediction": [self.labels[i] for i in probs.argmax(axis=1)]}
        if self.probability:
            result["probability"] = list(probs)
        if self.top_k:
            order = np.argsort(-probs, axis=1, kind="stable")[:, : self.top_k]
            result["top_k"] = [
                [{"label": self.labels[j], "probability": float(row[j])} for j in idx]
                for row, idx in zip(probs, order, strict=True)
            ]
        return result


@dataclass(frozen=True)
class KernelSpec:
    """What a Python worker needs to run the model on a batch of image bytes."""

    digest: str
    preprocess: PreprocessConfig
    output: str
    batch_size: int
    threads: int
    mapper: OutputMapper


def _apply_batch(
    contents: list[Any], spec: KernelSpec, model: Callable[[], Any], preprocessor: Any
) -> dict[str, list[Any]]:
    """Result columns + ``error`` for one Arrow batch, ``batch_size`` images per ONNX call."""
    n = len(contents)
    columns: dict[str, list[Any]] = {f.name: [None] * n for f in spec.mapper.fields}
    errors: list[str | None] = [None] * n
    for start in range(0, n, spec.batch_size):
        batch = preprocessor(contents[start:start + spec.batch_size])
        for i, error in enumerate(batch.errors):
            if error is not None:
                errors[start + i] = error
        if not len(batch.index):
            continue
        positions = [start + int(j) for j in batch.index]
        try:
            outputs = model().run(batch.tensor, [spec.output])[0]
            if outputs.ndim != 2 or outputs.shape[0] != len(positions):
                raise ValueError(f"unexpected output shape {outputs.shape} for {len(positions)} images")
            failed: dict[int, str] = {}
        except Exception as exc:  # noqa: BLE001 - one bad batch must not fail the job: retry row by row
            log.warning("ONNX Runtime failed on a batch of %d (%s); retrying row by row", len(positions), exc)
            outputs, failed = _row_by_row(batch.tensor, spec.output, model)
        finite = np.isfinite(outputs).all(axis=1)
        for k, position in enumerate(positions):
            if k in failed:
                errors[position] = ImageError(ErrorKind.MODEL, failed[k]).message
            elif not finite[k]:
                errors[position] = ImageError(ErrorKind.MODEL, "the model produced non-finite outputs").message
        rows = np.flatnonzero(finite)
        if not len(rows):
            continue
        try:
            mapped = spec.mapper(outputs[rows])
        except ImageError as exc:
            for k in rows:
                errors[positions[k]] = exc.message
            continue
        for name, values in mapped.items():
            column = columns[name]
            for k, value in zip(rows, values, strict=True):
                column[positions[k]] = value
    columns["error"] = errors
    return columns


def _row_by_row(tensor: np.ndarray, output: str, model: Callable[[], Any]) -> tuple[np.ndarray, dict[int, str]]:
    """Outputs of each image run alone (NaN rows where it failed) and the failures' messages."""
    results: list[np.ndarray | None] = []
    failed: dict[int, str] = {}
    for k in range(len(tensor)):
        try:
            out = model().run(tensor[k:k + 1], [output])[0]
            if out.ndim != 2 or out.shape[0] != 1:
                raise ValueError(f"unexpected output shape {out.shape}")
            results.append(out[0])
        except Exception as exc:  # noqa: BLE001
            failed[k] = f"ONNX Runtime failed on this image ({type(exc).__name__}: {exc})"
            results.append(None)
    width = max((len(r) for r in results if r is not None), default=1)
    outputs = np.full((len(results), width), np.nan, dtype=np.float32)
    for k, row in enumerate(results):
        if row is not None and len(row) == width:
            outputs[k] = row
    return outputs, failed


def _result_type(mapper: OutputMapper) -> StructType:
    return StructType([*mapper.fields, StructField("error", StringType(), True)])


def make_udf(bc: Broadcast, spec: KernelSpec, counter: Accumulator | None) -> Callable[[Column], Column]:
    """The scalar-iterator pandas UDF: bytes in, a struct of result columns and ``error`` out."""

    def run(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        from sparkvision.models.runtime import cached_model
        from sparkvision.preprocess import ImagePreprocessor

        preprocessor = ImagePreprocessor(spec.preprocess)
        session = None

        def model():
            nonlocal session
            if session is None:  # created on first use: a task of only bad rows never loads it
                session = cached_model(lambda: bc.value, spec.threads, key=spec.digest)
            return session

        for contents in batches:
            columns = _apply_batch(contents.tolist(), spec, model, preprocessor)
            if counter is not None:
                counter.add(len(contents))
            yield pd.DataFrame(columns)

    # Non-deterministic on purpose: otherwise the optimizer may push a filter on the
    # result (e.g. "error is null") below the projection by inlining the UDF into it,
    # and the CNN would run twice per row.
    return pandas_udf(run, _result_type(spec.mapper)).asNondeterministic()  # type: ignore[call-overload]


def run_model(
    frame: DataFrame,
    source: ModelSource,
    input_col: str,
    error_col: str,
    output_role: str,
    mapper: OutputMapper,
    columns: dict[str, tuple[str, Callable[[Column], Column] | None]],
    batch_size: int,
    threads: int,
    counter: Accumulator | None = None,
) -> DataFrame:
    """``frame`` with the model's result columns added and ``error_col`` set or kept.

    ``columns`` maps each mapper field to (output column name, optional conversion);
    an empty name leaves that field out. Rows that already have an error are not
    decoded: their bytes are passed as null and their original error is kept.
    """
    if input_col not in frame.columns:
        raise ValueError(f"input column {input_col!r} not found; the DataFrame has {frame.columns}")
    input_type: DataType = frame.schema[input_col].dataType
    if input_type.typeName() != "binary":
        raise ValueError(f"input column {input_col!r} must hold encoded image bytes (binary), not {input_type}")
    wanted = {name: conv for field_name, (name, conv) in columns.items() if name}
    clashes = [name for name in wanted if name in frame.columns and name != error_col]
    if clashes:
        raise ValueError(f"output column(s) {clashes} already exist; choose other names")
    spark = frame.sparkSession
    bc = broadcast_model(spark.sparkContext, source)
    spec = KernelSpec(source.digest, source.preprocess, source.output(output_role), batch_size, threads, mapper)
    udf = make_udf(bc, spec, counter)
    has_error = error_col in frame.columns
    content = F.when(F.col(error_col).isNull(), F.col(input_col)) if has_error else F.col(input_col)
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
