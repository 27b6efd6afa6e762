"""Launch :func:`.engine.run_rank` through Spark's own ``TorchDistributor``.

``local_mode=True`` (master ``local[...]``): TorchDistributor runs ``torchrun`` on the
driver with one process per worker. Otherwise each rank is a barrier task on an
executor, which runs ``torchrun`` for one process; every rank then reads its shard
of the datasets from storage all executors see (HDFS, an object store, or a shared
mount), and rank 0 writes the model directory, so it must be on shared storage too.

Only rank 0's result comes back (:func:`run_on_ranks`). In cluster mode TorchDistributor
returns partition 0's value, which is rank 0's. In local mode all ranks pickle their
return values to one file and the last to finish wins, so rank 0 also writes its value
to a file of its own, and that is what is returned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sparkvision import __version__, storage
from sparkvision.config import DecodeSettings, PreprocessConfig
from sparkvision.config.training import TrainConfig
from sparkvision.session import is_connect, master_of
from sparkvision.training.checkpoints import CHECKPOINT_DIR, latest_checkpoint
from sparkvision.training.data import prepare_sources, read_index
from sparkvision.training.engine import RESULT_PATH_ENV, publish_rank0_result, run_rank
from sparkvision.training.job import TrainJob
from sparkvision.training.modelbuild import resolve_preprocess
from sparkvision.training.tasks import task_class

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`fit` returns: the model directory and rank 0's metrics and curves."""

    out: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    labels: list[str]
    preprocess: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "labels": self.labels, "metrics": self.metrics, "history": self.history}


def _local_path(uri: str) -> str:
    try:
        return os.path.abspath(storage.local_path(uri))
    except storage.NotLocalError as exc:
        raise ValueError(f"the model directory must be a local or shared-mount path: {exc}") from None


def _prepare_out(out: str, config: TrainConfig, overwrite: bool) -> None:
    path = Path(out)
    if not path.exists():
        return
    has_checkpoint = latest_checkpoint(path) is not None
    if config.checkpoint.resume:
        return
    if any(path.iterdir()):
        if not overwrite:
            hint = " (it holds checkpoints: pass --resume to continue that run)" if has_checkpoint else ""
            raise FileExistsError(f"{out} already exists{hint}; pass overwrite (--overwrite) to replace it")
        shutil.rmtree(path)


def _remove_work(spark, work_dir: str, written: list[str], default: bool) -> None:
    """Delete the datasets this run wrote (the whole default work directory)."""
    targets = [work_dir] if default else [*written, work_dir.rstrip("/") + "/prepared.json"]
    for uri in targets:
        storage.delete(uri, spark)


def _progress_tty() -> str | None:
    try:
        return os.ttyname(sys.stderr.fileno()) if sys.stderr.isatty() else None
    except OSError:
        return None


class _Rank0Writes:
    """Wraps a rank function so rank 0 also pickles its return value to ``path``.

    A rank function may publish its result itself before its last collective
    (:func:`.engine.publish_rank0_result`), so the file exists before any rank can exit.
    """

    def __init__(self, fn: Callable[..., Any], path: str) -> None:
        self.fn = fn
        self.path = path

    def __call__(self, *args: Any) -> Any:
        os.environ[RESULT_PATH_ENV] = self.path
        value = self.fn(*args)
        publish_rank0_result(value)
        return value


class TrainingFailedError(RuntimeError):
    """A training rank (or the executor running it) failed; checkpoints written so far are kept."""


def _failure_summary(exc: BaseException) -> str:
    """The line of Spark's/TorchDistributor's error that says what failed, not its stack trace."""
    # Local mode: TorchDistributor's "Command [...] failed with return code N" (the ranks'
    # own one-line errors are already in the log above).
    code = re.search(r"failed with return code (-?\d+)", str(exc))
    if code:
        return f"a training process exited with code {code.group(1)}"
    lines = [line.strip(" :") for line in str(exc).splitlines() if line.strip(" :")]
    for marker in ("Job aborted", "TorchDistributor failed", "Error", "Exception"):
        for line in lines:
            if marker in line:
                return line[:500]
    return (lines[0] if lines else type(exc).__name__)[:500]


def run_on_ranks(fn: Callable[..., Any], *args: Any, workers: int, local_mode: bool, use_gpu: bool) -> Any:
    """Run ``fn(*args)`` on ``workers`` ranks through TorchDistributor; return rank 0's value."""
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=workers, local_mode=local_mode, use_gpu=use_gpu)
    result_dir = tempfile.mkdtemp(prefix="sparkvision-ranks-") if local_mode else None
    try:
        target: Callable[..., Any] = fn
        if result_dir:
            target = _Rank0Writes(fn, os.path.join(result_dir, "rank0.pickle"))
        # TorchDistributor echoes every rank's output to stdout; stdout is for results.
        result_path = os.path.join(result_dir, "rank0.pickle") if result_dir else None
        try:
            with contextlib.redirect_stdout(sys.stderr):
                returned = distributor.run(target, *args)
        except Exception as exc:
            # Rank 0 publishes only after its work is complete: a process that then failed in
            # its own teardown (gloo can abort at exit) does not undo a finished run.
            if result_path is None or not os.path.exists(result_path):
                raise
            log.warning("a training process failed after rank 0 had finished (%s); using rank 0's result",
                        _failure_summary(exc))
        if result_path:
            with open(result_path, "rb") as handle:
                returned = pickle.load(handle)
    finally:
        if result_dir:
            shutil.rmtree(result_dir, ignore_errors=True)
    return returned


def _drift_profile(spark, out: str, prepared) -> None:
    """The drift reference profile (:mod:`sparkvision.drift`) of the written model on the val part (the
    train part without one), scored in Spark. The model is already written: a failure here only warns."""
    from sparkvision.drift.spark import build_profile
    from sparkvision.io import load_images

    part, uri = ("val", prepared.val) if prepared.val else ("train", prepared.train)
    given = prepared.sources.get(part)
    source = f"{part}: {given}" if given else f"{part} part of {prepared.sources.get('train')} ({uri})"
    try:
        path = build_profile(spark, out, load_images(spark, uri), source)
        log.info("drift profile of the %s part written to %s", part, path)
    except Exception as exc:  # noqa: BLE001 - the model directory is complete without it
        log.warning("no drift profile written for %s: %s", out, exc)


def fit(
    spark,
    config: TrainConfig,
    train: str,
    out: str,
    val: str | None = None,
    test: str | None = None,
    name: str | None = None,
    overwrite: bool = False,
    decode: DecodeSettings | None = None,
    source_reader=None,
    labels: list[str] | None = None,
    preprocess: PreprocessConfig | None = None,
    task: str = "classify",
) -> TrainResult:
    """Train ``config.model.arch`` on ``train`` and write a model directory to ``out``.

    ``train``/``val``/``test`` are any SRC (built-in name, dataset, folder, URI);
    ``source_reader(src) -> DataFrame`` overrides how non-dataset sources are read
    (the CLI passes its --glob/--extensions options this way).

    A network given by ``config.model.init_from`` has its own output order and input
    preprocessing: pass them as ``labels`` (the model card's) and ``preprocess``, else
    classes are the data's, sorted, and preprocessing is the architecture's.

    ``task`` names what the network learns (:data:`.tasks.TASKS`; the ranks' half of it).
    """
    # Everything that can be checked before Spark writes anything: the config validated
    # itself; the task must measure the monitor, the registry must know the network.
    if is_connect(spark):
        # pyspark 4.3's TorchDistributor has a Connect mode, but sparkvision's ranks are not tested on it.
        raise ValueError("train needs a classic Spark session (--master), not Spark Connect (--remote)")
    task_class(task).check_monitor(config.monitor)
    if preprocess is not None and config.model.normalize == "data":
        raise ValueError("a given preprocessing and normalize='data' contradict each other")
    preprocess = preprocess or resolve_preprocess(config.model)
    out = _local_path(out)
    _prepare_out(out, config, overwrite)
    Path(out).mkdir(parents=True, exist_ok=True)
    work_dir = config.data.work_dir or os.path.join(out, ".work")
    prepared = prepare_sources(spark, train, val, test, config.data.val_fraction, config.data.test_fraction,
                               config.seed, work_dir, source_reader)
    index = read_index(prepared.train)
    tasks = task_class(task)
    counts = tasks.data_classes(prepared.train)
    classes = sorted(counts)
    if len(classes) < tasks.min_classes:
        raise ValueError(f"{task} training needs at least {tasks.min_classes} classes with usable rows in {train}, "
                         f"found {classes}")
    if labels is not None:
        unknown = sorted(set(classes) - set(labels))
        if unknown:
            raise ValueError(f"classes {unknown} of {train} are not among the model's labels {list(labels)}")
        classes = list(labels)

    master = master_of(spark)
    local_mode = config.scaling.local_mode if config.scaling.local_mode is not None else master.startswith("local")
    use_gpu = config.scaling.use_gpu
    if use_gpu is None:
        import torch

        use_gpu = torch.cuda.is_available() if local_mode else int(
            spark.conf.get("spark.task.resource.gpu.amount", "0") or 0) > 0
    workers = config.scaling.workers
    if config.scaling.threads_per_worker:
        threads = config.scaling.threads_per_worker
    elif local_mode:
        threads = max(1, (os.cpu_count() or 1) // workers)
    else:
        threads = int(spark.conf.get("spark.task.cpus", "1") or 1)

    job = TrainJob(
        config=config, train_uri=prepared.train, val_uri=prepared.val, test_uri=prepared.test, classes=classes,
        class_counts=[counts.get(c, 0) for c in classes], preprocess=preprocess, out_dir=out,
        name=name or Path(out).name, use_gpu=bool(use_gpu), threads=threads, decode=decode or DecodeSettings(),
        provenance={
            "trained_by": f"sparkvision {__version__} train",
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "sources": prepared.sources,
            "datasets": {"train": prepared.train, "val": prepared.val, "test": prepared.test},
            "rows": {"train": index.rows},
            "spark_master": master,
            "local_mode": local_mode,
            "workers": workers,
            "threads_per_worker": threads,
            "device": "cuda" if use_gpu else "cpu",
            "seed": config.seed,
        },
        progress_tty=_progress_tty() if local_mode else None,
        log_level=logging.getLogger("sparkvision").getEffectiveLevel(),
        task=task,
    )
    log.info("training %s on %d classes (%d rows in %s) with %d worker(s), %s mode, %d thread(s) each, %s",
             config.model.arch, len(classes), index.rows, prepared.train, workers,
             "local" if local_mode else "cluster", threads, "GPU" if use_gpu else "CPU")
    try:
        # Locally the ranks pick their GPU by LOCAL_RANK themselves: TorchDistributor's own GPU
        # handling would demand a driver configured with Spark GPU resources.
        returned = run_on_ranks(run_rank, job, workers=workers, local_mode=local_mode,
                                use_gpu=bool(use_gpu) and not local_mode)
    except Exception as exc:  # noqa: BLE001 - a rank or executor died: say so, and how to go on
        last = latest_checkpoint(out)
        hint = (f"the last checkpoint is {last}: run the same command with --resume to continue from it"
                if last is not None else "no checkpoint was written")
        raise TrainingFailedError(f"training failed ({_failure_summary(exc)}); {hint}") from exc
    if not isinstance(returned, dict):
        raise RuntimeError("training finished without rank 0's result")
    if task == "classify":
        _drift_profile(spark, returned["out"], prepared)
    if not config.data.keep_work:
        _remove_work(spark, work_dir, prepared.written, default=config.data.work_dir is None)
    return TrainResult(returned["out"], returned["metrics"], returned["history"], returned["labels"],
                       returned["preprocess"])


__all__ = ["CHECKPOINT_DIR", "TrainResult", "TrainingFailedError", "fit"]
