"""ONNX Runtime sessions, one per model per Python process, reused across tasks and batches.

Spark keeps Python workers alive between tasks (``spark.python.worker.reuse``), so a
session created in a worker serves every later task of that worker, as Spark's own
``pyspark.ml.model_cache`` does for ``predict_batch_udf``. Threads per session follow
the cores Spark gives a task (``spark.task.cpus``), so N concurrent tasks on N cores
do not oversubscribe the CPU.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

_CACHE: OrderedDict[tuple[str, int], OnnxModel] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_CAPACITY = 4


def _providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxModel:
    """An inference session with its input/output names, for NCHW float32 batches."""

    def __init__(self, model: bytes | str | Path, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        source = str(model) if isinstance(model, Path) else model
        self.session = ort.InferenceSession(source, sess_options=options, providers=_providers())
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.threads = threads

    def run(self, batch: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
        return self.session.run(outputs or self.output_names, {self.input_name: batch})

    def run_batched(self, batch: np.ndarray, output: str, batch_size: int) -> np.ndarray:
        """One output for a large array, ``batch_size`` rows per call."""
        parts = [self.run(batch[i:i + batch_size], [output])[0] for i in range(0, len(batch), batch_size)]
        if parts:
            return np.concatenate(parts)
        shape = self.session.get_outputs()[self.output_names.index(output)].shape
        return np.empty((0, *[d if isinstance(d, int) else 0 for d in shape[1:]]), dtype=np.float32)


def model_key(model: bytes | str | Path) -> str:
    """A cache key: a content digest for bytes, the resolved path and mtime for files."""
    if isinstance(model, bytes | bytearray):
        return hashlib.sha256(model).hexdigest()
    path = Path(model).resolve()
    return f"{path}:{path.stat().st_mtime_ns}"


def cached_model(
    model: bytes | str | Path | Callable[[], bytes], threads: int | None = None, key: str | None = None
) -> OnnxModel:
    """The process-wide session for ``model``; created on first use.

    ``model`` may also be a zero-argument callable returning the bytes (with ``key``
    given), so a Spark broadcast is only read when this process has no session yet.
    """
    threads = threads or int(os.environ.get("SPARKVISION_TASK_CPUS", "1"))
    if callable(model) and key is None:
        raise ValueError("cached_model needs a key when the model is given as a loader")
    cache_key = (key or model_key(model), threads)  # type: ignore[arg-type]
    with _CACHE_LOCK:
        found = _CACHE.get(cache_key)
        if found is not None:
            _CACHE.move_to_end(cache_key)
            return found
    created = OnnxModel(model() if callable(model) else model, threads)
    with _CACHE_LOCK:
        _CACHE[cache_key] = created
        while len(_CACHE) > _CACHE_CAPACITY:
            _CACHE.popitem(last=False)
    log.debug("created ONNX Runtime session %s with %d threads", cache_key[0][:16], threads)
    return created
