"""The function every training rank runs: the epoch loop, the same for every task.

:func:`run_rank` is what :mod:`.distributor` hands to Spark's TorchDistributor. Rank r
of K loads its shard of each dataset part, trains with DDP (gloo on CPU, nccl on GPU)
at ``batch_size / K`` per step, and after every epoch all ranks evaluate their share
of the validation set and sum the counts, so the metrics are those of the whole set.
Only rank 0 writes: TensorBoard events, ``curves.csv``, a checkpoint per epoch, and at
the end the model directory.

What depends on what the network learns (data, batches and augmentation, loss,
metrics, export) is the run's :class:`.tasks.Task`; the rest lives next door:
:mod:`.collectives` (sums across ranks), :mod:`.checkpoints` (checkpoint format,
resuming, RNG state, :class:`.checkpoints.TrainState`), :mod:`.modelbuild` (networks
and parameter groups), :mod:`.export` (the model directory).

Reproducibility: data order and augmentation are functions of (seed, epoch, rank), and
each checkpoint holds every rank's RNG state, so resuming continues the exact run that
was interrupted: same seed, same workers, same final weights and metrics.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import pickle
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sparkvision.config import PreprocessConfig
from sparkvision.storage import atomic_write
from sparkvision.training.checkpoints import (
    CHECKPOINT_DIR,
    TrainState,
    checkpoint_path,
    latest_checkpoint,
    resume,
    rng_state,
    save_best,
    save_checkpoint,
    trained_weights,
)
from sparkvision.training.collectives import Collective
from sparkvision.training.job import TrainJob
from sparkvision.training.masks import ChannelMasks, settle_batch_norms
from sparkvision.training.modelbuild import build_model, resolve_preprocess
from sparkvision.training.tasks import ClassificationTask, Shard, Task, make_task

log = logging.getLogger("sparkvision.training")

TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.csv"
#: ``curves.csv``'s columns for a classifier (every task's: ``Task.curve_columns()``).
CURVE_COLUMNS = ClassificationTask.curve_columns()
RESULT_PATH_ENV = "SPARKVISION_RANK0_RESULT"


def publish_rank0_result(value: Any) -> None:
    """On rank 0, pickle ``value`` to the file named by ``$SPARKVISION_RANK0_RESULT`` (once)."""
    path = os.environ.get(RESULT_PATH_ENV)
    if not path or int(os.environ.get("RANK", "0")) != 0 or os.path.exists(path):
        return
    atomic_write(path, pickle.dumps(value))


def rank_seed(seed: int, rank: int) -> int:
    """torch's global seed on ``rank`` during training (dropout draws differ between ranks)."""
    return int(np.random.SeedSequence([seed, rank, 0x70C4]).generate_state(1)[0])


def run_rank(job: TrainJob) -> dict[str, Any] | None:
    """Train on this rank's shard; rank 0 returns the result (and writes every file)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    logging.basicConfig(
        level=job.log_level if rank == 0 else max(job.log_level, logging.WARNING), stream=sys.stderr, force=True,
        format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    if world != job.config.scaling.workers:
        raise RuntimeError(f"started with {world} ranks, configured for {job.config.scaling.workers}")
    _watch_parent()
    torch.set_num_threads(job.threads)
    if job.use_gpu:
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"rank {rank}: {world} GPU workers on a machine with {torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        device = torch.device("cpu")
    try:
        if world > 1:
            dist.init_process_group("nccl" if job.use_gpu else "gloo")
        result = _train(job, rank, world, device)
        publish_rank0_result(result)
        if world > 1:
            # No rank leaves before rank 0 has written the model directory and its result:
            # a rank that exits early (or dies in its own teardown) makes torchrun stop the rest.
            dist.barrier()
        return result
    except Exception as exc:
        # One line per failed rank; the driver turns the failure into one error with advice.
        log.error("rank %d failed: %s: %s", rank, type(exc).__name__, exc)
        log.debug("rank %d traceback", rank, exc_info=True)
        raise SystemExit(1) from None
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _watch_parent() -> None:
    """Exit when the process that started this rank is gone (a killed driver), instead of
    training on as an orphan: torchrun starts ranks in their own sessions."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _train(job: TrainJob, rank: int, world: int, device: torch.device) -> dict[str, Any] | None:
    """Every epoch still to run, then the final metrics; rank 0 returns the result."""
    run = _Run(job, rank, world, device)
    while run.state.epoch < job.config.epochs and not run.state.stopped_early:
        run.epoch()
    return run.finish()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The training step's autocast type: bfloat16 for ``bf16``, and for ``auto`` on a GPU with bf16; None: fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


class _Run:
    """One rank's training run: its shards, network, optimiser and :class:`TrainState`.

    Every rank makes the same calls in the same order (each collective is met by all).
    """

    def __init__(self, job: TrainJob, rank: int, world: int, device: torch.device) -> None:
        self.job, self.cfg, self.rank, self.lead = job, job.config, rank, rank == 0
        self.comm = Collective(world, device)
        self.device = device
        self.out_dir = Path(job.out_dir)
        self.task: Task = make_task(job, device)
        self.autocast = autocast_dtype(self.cfg.scaling.precision, device)
        if self.lead and self.autocast is not None:
            log.info("mixed precision: forward and loss in bfloat16 (torch.autocast on %s)", device.type)
        self.progress = _open_progress(job.progress_tty) if self.lead else None
        self._load()
        self._build()
        self.state = TrainState()
        self.resumed_from: int | None = None
        if self.cfg.checkpoint.resume:
            restored = resume(job.out_dir, self.cfg, job.classes, self.comm, rank, self.model, self.optimizer,
                              self.scheduler)
            if restored is not None:
                self.state, self.resumed_from = restored, restored.epoch
        self.writer = None
        if self.lead:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR),
                                        purge_step=self.state.epoch + 1 if self.state.epoch else None)

    def _load(self) -> None:
        """This rank's train and val shards, what was left out of them, and the final preprocessing."""
        job, comm, started = self.job, self.comm, time.perf_counter()
        self.train: Shard | None = self.task.load(job.train_uri, "train", self.rank, comm.world, self.progress)
        self.val = self.task.load(job.val_uri, "val", self.rank, comm.world, self.progress) if job.val_uri else None
        if comm.max(int(len(self.train) == 0)):
            raise ValueError(f"a rank got no usable training rows from {job.train_uri}: fewer rows than workers?")
        self.decode_errors = comm.gather({"train": self.train.decode_errors,
                                          "val": self.val.decode_errors if self.val else {}})
        self.skipped = {"train": self.train.skipped, **({"val": self.val.skipped} if self.val is not None else {})}
        self.preprocess = job.preprocess
        if self.cfg.model.normalize == "data":
            self.preprocess = _data_normalization(self.train.images, self.preprocess, comm)
        self.load_seconds = time.perf_counter() - started

    def _build(self) -> None:
        """The network (DDP-wrapped on several ranks), its optimiser and schedule, the monitor."""
        from sparkvision.training.schedules import build_optimizer, build_scheduler

        cfg, task, comm = self.cfg, self.task, self.comm
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        task.prepare(self.preprocess)
        self.model, groups, self.frozen = task.build_model()
        self.model.to(memory_format=task.memory_format)
        self.masks = ChannelMasks.of_zero_channels(self.model) if cfg.model.keep_pruned else None
        if self.masks is not None and self.lead:
            log.info("keeping %d pruned output channels of %d convolutions at zero", self.masks.channels,
                     len(self.masks))
        self.net: nn.Module = self.model
        if comm.on:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        torch.manual_seed(rank_seed(cfg.seed, self.rank))
        self.local_batch = cfg.batch_size // comm.world
        # Every rank takes the same number of steps: the longest shard's.
        self.shard_len = comm.max(len(self.train))  # type: ignore[arg-type]
        self.steps = math.ceil(self.shard_len / self.local_batch)
        self.optimizer = build_optimizer(groups, cfg.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.epochs, self.steps)
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.backbone_params = [p for g in self.optimizer.param_groups if g["backbone"] for p in g["params"]]
        if cfg.model.head_epochs and not self.backbone_params:
            raise ValueError(f"head_epochs needs a pretrained backbone under a separate head; {cfg.model.arch} "
                             "trains as one piece")
        self.columns = task.curve_columns()
        self.monitor = cfg.monitor if self.val is not None else "train_loss"
        task.check_monitor(self.monitor)
        self.maximize = self.monitor in task.maximize

    def epoch(self) -> None:
        """Train one epoch, validate, keep the best weights; rank 0 logs and writes its files."""
        from sparkvision.training.data import augment_rng, epoch_order

        cfg, task, comm, state, train = self.cfg, self.task, self.comm, self.state, self.train
        epoch = state.epoch
        self.net.train()
        for module in self.frozen:
            module.eval()
        head_only = epoch < cfg.model.head_epochs
        if head_only:  # the backbone as pretrained: batch-norm statistics too
            self.model.eval()
            self.model.get_classifier().train()
        order = epoch_order(len(train), self.shard_len, cfg.seed, epoch, self.rank)  # type: ignore[arg-type]
        arng = augment_rng(cfg.seed, epoch, self.rank)
        sums = torch.zeros(2, dtype=torch.float64)  # loss * samples, samples
        task_sums = torch.zeros(len(task.train_metric_names), dtype=torch.float64)
        bar = _epoch_bar(self.progress, self.steps, epoch, cfg.epochs)
        lr_used = self.optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        for step in range(self.steps):
            rows = order[step * self.local_batch: (step + 1) * self.local_batch]
            batch = task.train_batch(train, rows, arng)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast is not None):
                outputs = self.net(batch.inputs)
                loss = task.loss(outputs, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if head_only:  # an optimiser skips a parameter without a gradient (no decay either)
                for p in self.backbone_params:
                    p.grad = None
            if cfg.optimizer.grad_clip_norm:
                nn.utils.clip_grad_norm_(self.trainable, cfg.optimizer.grad_clip_norm)
            self.optimizer.step()
            if self.masks is not None:
                self.masks.apply()
            self.scheduler.step()
            sums[0] += loss.item() * len(rows)
            sums[1] += len(rows)
            task_sums += task.train_counts(outputs, batch)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        train_seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if self.masks is not None:
            sample = task.normalized(task.to_unit(train.images[order[: self.local_batch]]))  # type: ignore[union-attr]
            settle_batch_norms(self.model, sample)
        totals = comm.sum(torch.cat([sums, task_sums]))
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr_used, "train_loss": float(totals[0] / totals[1]),
                                  **task.train_metrics(totals[2:], totals[1])}
        if self.val is not None:
            metrics = task.metrics(comm.sum(task.evaluate(self.model, self.val)), "val")
            record.update({k: v for k, v in metrics.items() if not k.endswith("_count")})
        record["epoch_seconds"] = time.perf_counter() - t0
        # Throughput is the slowest rank's: the epoch is as fast as it.
        slowest = comm.max(int(train_seconds * 1e6)) / 1e6
        record["train_samples_per_s"] = float(totals[1]) / max(slowest, 1e-9)
        improved = state.observe(record, self.monitor, self.maximize, self.model)
        if cfg.patience is not None and self.val is not None and state.since_best >= cfg.patience:
            state.stopped_early = True
        rng_states = comm.gather(rng_state(self.device))
        if self.lead:
            self._write_epoch(record, improved, rng_states)

    def _write_epoch(self, record: dict[str, Any], improved: bool, rng_states: list[dict[str, Any]]) -> None:
        """Rank 0: the epoch's log line, TensorBoard scalars, ``curves.csv``, ``best.pt`` and checkpoint."""
        cfg, state = self.cfg, self.state
        _log_epoch(record, cfg.epochs, improved)
        for key in self.columns[1:]:
            if key in record:
                self.writer.add_scalar(key.replace("_", "/", 1), record[key], record["epoch"])  # type: ignore[union-attr]
        self.writer.flush()  # type: ignore[union-attr]
        _write_curves(self.out_dir, self.columns, state.history)
        if improved:
            save_best(self.out_dir, state, record)
        save_checkpoint(self.out_dir, cfg, self.job.classes, self.preprocess.to_dict(), self.model, self.optimizer,
                        self.scheduler, state, rng_states)
        if state.stopped_early:
            log.info("early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                     self.monitor, cfg.patience, state.best, state.best_epoch)

    def finish(self) -> dict[str, Any] | None:
        """Evaluate the exported weights on val and test; rank 0 writes the model directory."""
        job, task, comm, state = self.job, self.task, self.comm, self.state
        exports_best = self.cfg.export == "best" and state.best_state is not None
        if exports_best:
            self.model.load_state_dict(state.best_state)  # type: ignore[arg-type]
        final: dict[str, Any] = {}
        if self.val is not None:
            final.update(task.metrics(comm.sum(task.evaluate(self.model, self.val)), "val"))
        self.train = None  # memory for the test shard
        if job.test_uri:
            test = task.load(job.test_uri, "test", self.rank, comm.world, self.progress)
            final.update(task.metrics(comm.sum(task.evaluate(self.model, test)), "test"))
            self.decode_errors.extend(comm.gather({"test": test.decode_errors}))
            self.skipped["test"] = test.skipped
        if self.progress is not None:
            self.progress.close()
        if not self.lead:
            return None
        self.writer.close()  # type: ignore[union-attr]
        history = state.history
        last_train = {key: history[-1][key] if history else None for key in self.columns
                      if key.startswith("train_") and key != "train_samples_per_s"}
        metrics = {
            **final,
            "exported_epoch": state.best_epoch if exports_best else state.epoch,
            "best_epoch": state.best_epoch,
            "monitor": self.monitor,
            "epochs_run": state.epoch,
            "stopped_early": state.stopped_early,
            **last_train,
            "train_samples_per_s": float(np.median([h["train_samples_per_s"] for h in history])) if history else None,
            "data_load_seconds": self.load_seconds,
            "workers": comm.world,
            "precision": "bf16" if self.autocast is not None else "fp32",
            "skipped_rows": _merge_counts(self.decode_errors, self.skipped),
        }
        if self.resumed_from is not None:
            metrics["resumed_from_epoch"] = self.resumed_from
        metrics = task.export(self.model, metrics, self.val.images if self.val is not None else None)
        return {"out": str(self.out_dir), "metrics": metrics, "history": history, "labels": list(job.classes),
                "preprocess": self.preprocess.to_dict()}


def _open_progress(tty: str | None) -> TextIO | None:
    if not tty:
        return None
    try:
        return open(tty, "w")  # noqa: SIM115 - closed at the end of the run
    except OSError:
        return None


def _data_normalization(images: np.ndarray, preprocess: PreprocessConfig, comm: Collective) -> PreprocessConfig:
    """Per-channel mean/std of the whole training set (each rank sums its shard)."""
    channels = images.shape[-1]
    sums = torch.zeros(2 * channels + 1, dtype=torch.float64)
    for start in range(0, len(images), 4096):
        chunk = images[start: start + 4096].reshape(-1, channels).astype(np.float64) / 255.0
        sums[:channels] += torch.from_numpy(chunk.sum(axis=0))
        sums[channels: 2 * channels] += torch.from_numpy((chunk**2).sum(axis=0))
        sums[-1] += len(chunk)
    sums = comm.sum(sums)
    mean = sums[:channels] / sums[-1]
    std = torch.sqrt(torch.clamp(sums[channels: 2 * channels] / sums[-1] - mean**2, min=1e-12))
    return replace(preprocess, mean=tuple(round(float(m), 6) for m in mean),
                   std=tuple(round(float(s), 6) for s in std))


def _merge_counts(decode_errors: list[dict[str, dict[str, int]]],
                  skipped: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Rows left out of each part, by reason: error kinds from ingest or decoding, missing
    or unknown labels (nothing is dropped silently)."""
    merged: dict[str, dict[str, int]] = {}
    for per_part in [*decode_errors, skipped]:
        for part, counts in per_part.items():
            bucket = merged.setdefault(part, {})
            for kind, n in counts.items():
                bucket[kind] = bucket.get(kind, 0) + n
    return {part: counts for part, counts in merged.items() if counts}


def _epoch_bar(progress: TextIO | None, steps: int, epoch: int, epochs: int):
    if progress is None:
        return None
    from tqdm import tqdm

    return tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", file=progress, leave=True,
                dynamic_ncols=True)


def _log_epoch(record: dict[str, Any], epochs: int, improved: bool) -> None:
    """``epoch 3/10, lr 0.05, train loss 0.41 top1 0.88, val loss ... top1 ... top5 ..., 900 samples/s``."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:.4g}"]
    for part in ("train", "val"):
        values = [f"{key[len(part) + 1:]} {value:.4f}" for key, value in record.items()
                  if key.startswith(f"{part}_") and key != "train_samples_per_s"]
        if values:
            parts.append(f"{part} {' '.join(values)}")
    parts.append(f"{record['train_samples_per_s']:.0f} samples/s")
    log.info("%s%s", ", ".join(parts), " *" if improved else "")


def _write_curves(out_dir: Path, columns: list[str], history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(out_dir / CURVES_FILE, buffer.getvalue())


__all__ = [
    "CHECKPOINT_DIR",
    "CURVE_COLUMNS",
    "RESULT_PATH_ENV",
    "Shard",
    "Task",
    "TrainJob",
    "TrainState",
    "build_model",
    "checkpoint_path",
    "latest_checkpoint",
    "publish_rank0_result",
    "resolve_preprocess",
    "run_rank",
    "trained_weights",
]
