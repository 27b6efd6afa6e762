"""The function every training rank runs: DDP over its own data shard, validation, checkpoints.

:func:`run_rank` is what :mod:`.distributor` hands to Spark's TorchDistributor. Rank r
of K reads and decodes its shard (:mod:`.data`), trains with DDP (gloo on CPU, nccl on
GPU) at ``batch_size / K`` per step, and after every epoch all ranks evaluate their
share of the validation set and sum the counts, so top-1/top-5/loss are those of the
whole set. Only rank 0 writes: TensorBoard events, ``curves.csv``, a checkpoint per
epoch, and at the end the model directory (ONNX, labels, preprocessing, metrics).

Reproducibility: data order and augmentation are functions of (seed, epoch, rank), so
they need no saved state; torch's global generator (dropout) is saved per rank in each
checkpoint, with the model, optimiser, scheduler, early-stopping state and history.
Resuming from a checkpoint therefore continues the exact run that was interrupted:
same seed, same workers, same final weights and metrics.
"""

from __future__ import annotations

import copy
import csv
import inspect
import io
import logging
import math
import os
import pickle
import random
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sparkvision.config import DecodeSettings, PreprocessConfig
from sparkvision.config.training import ModelConfig, TrainConfig
from sparkvision.training.masks import ChannelMasks, settle_batch_norms

log = logging.getLogger("sparkvision.training")

CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.csv"
BEST_FILE = "best.pt"
CURVE_COLUMNS = ["epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
                 "epoch_seconds", "train_samples_per_s"]


@dataclass
class TrainJob:
    """Everything a rank needs; pickled to every rank by TorchDistributor."""

    config: TrainConfig
    train_uri: str
    val_uri: str | None
    test_uri: str | None
    classes: list[str]
    class_counts: list[int]
    preprocess: PreprocessConfig
    out_dir: str
    name: str
    use_gpu: bool
    threads: int
    provenance: dict[str, Any] = field(default_factory=dict)
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    #: A terminal the driver draws on (local mode): rank 0's progress bars go there.
    progress_tty: str | None = None
    #: Rank 0 logs at this level (the driver's); the other ranks at WARNING or above.
    log_level: int = logging.INFO


# -- models -------------------------------------------------------------------------------

def resolve_preprocess(model: ModelConfig) -> PreprocessConfig:
    """The registered model's preprocessing with the config's size/channel overrides."""
    from sparkvision.models import get_spec

    base = get_spec(model.arch).preprocess
    changes: dict[str, Any] = {}
    if model.image_size is not None:
        changes["size"] = tuple(model.image_size)
    if model.channels is not None and model.channels != base.channels:
        mean, std = base.mean, base.std
        if model.channels == 1:
            changes.update(channels=1, mean=(sum(mean) / len(mean),), std=(sum(std) / len(std),))
        else:
            changes.update(channels=3, mean=mean * 3, std=std * 3)
    return replace(base, **changes) if changes else base


def build_model(model_cfg: ModelConfig, num_classes: int, channels: int) -> tuple[nn.Module, list[dict], list[nn.Module]]:
    """The network, its parameter groups (with ``lr_mult``), and the frozen modules
    (kept in eval mode so their batch-norm statistics stay as pretrained)."""
    from sparkvision.models import create_model, get_spec

    if model_cfg.init_from:
        return _initial_model(model_cfg, num_classes, channels)
    spec = get_spec(model_cfg.arch)
    pretrained = spec.has_pretrained if model_cfg.pretrained is None else model_cfg.pretrained
    params = inspect.signature(spec.builder).parameters  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    if "in_chans" in params:
        kwargs["in_chans"] = channels
    elif channels != spec.preprocess.channels:
        raise ValueError(f"{model_cfg.arch} takes {spec.preprocess.channels}-channel input, not {channels}")
    if model_cfg.dropout is not None:
        if "dropout" not in params:
            raise ValueError(f"{model_cfg.arch} has no dropout to set")
        kwargs["dropout"] = model_cfg.dropout
    model = create_model(model_cfg.arch, pretrained=pretrained, num_classes=num_classes, **kwargs)
    groups, frozen = _param_groups(model, model_cfg, pretrained)
    return model, groups, frozen


def _initial_model(model_cfg: ModelConfig, num_classes: int,
                   channels: int) -> tuple[nn.Module, list[dict], list[nn.Module]]:
    """The network and weights of ``model_cfg.init_from`` (a whole module, a state dict
    of ``arch``, or a sparkvision checkpoint), counted as pretrained."""
    loaded = torch.load(model_cfg.init_from, map_location="cpu", weights_only=False)
    if isinstance(loaded, nn.Module):
        model = loaded
    else:
        state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{model_cfg.init_from} holds neither a torch module, a state dict nor a checkpoint")
        model, _, _ = build_model(replace(model_cfg, init_from=None, pretrained=False), num_classes, channels)
        model.load_state_dict(state)
    groups, frozen = _param_groups(model, model_cfg, pretrained=True)
    return model, groups, frozen


def _param_groups(model: nn.Module, model_cfg: ModelConfig, pretrained: bool) -> tuple[list[dict], list[nn.Module]]:
    """Head and backbone parameter groups (``lr_mult``), and the frozen stages."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    frozen: list[nn.Module] = []
    if model_cfg.unfreeze_stages is not None:
        if not hasattr(model, "stages"):
            raise ValueError(f"{model_cfg.arch} has no stages() to freeze; leave unfreeze_stages unset")
        stages = model.stages()
        n = max(0, min(model_cfg.unfreeze_stages, len(stages)))
        for stage in stages[: len(stages) - n]:
            for p in stage.parameters():
                p.requires_grad_(False)
            frozen.append(stage)
    backbone = [p for p in model.parameters() if id(p) not in head_params and p.requires_grad]
    head_list = [p for p in model.parameters() if id(p) in head_params]
    backbone_mult = model_cfg.backbone_lr_mult if pretrained else 1.0
    groups = [{"params": head_list, "lr_mult": 1.0}] if head_list else []
    if backbone:
        groups.append({"params": backbone, "lr_mult": backbone_mult if head_list else 1.0})
    return groups, frozen


# -- evaluation ---------------------------------------------------------------------------

def evaluate_counts(model: nn.Module, images: np.ndarray, labels: np.ndarray, preprocess: PreprocessConfig,
                    device: torch.device, batch_size: int) -> torch.Tensor:
    """float64 [cross-entropy sum, top-1 correct, top-5 correct, count] over a shard."""
    from sparkvision.preprocess import Normalizer

    normalize = Normalizer(preprocess.mean, preprocess.std)
    sums = torch.zeros(4, dtype=torch.float64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x = torch.from_numpy(normalize(images[start: start + batch_size])).to(device)
            y = torch.from_numpy(labels[start: start + batch_size]).to(device)
            logits = model(x).float()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            sums[0] += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            sums[1] += (top[:, 0] == y).sum().item()
            sums[2] += (top == y[:, None]).any(dim=1).sum().item()
            sums[3] += len(y)
    model.train(was_training)
    return sums


def counts_to_metrics(sums: torch.Tensor, prefix: str) -> dict[str, float]:
    n = max(float(sums[3]), 1.0)
    return {f"{prefix}_loss": float(sums[0]) / n, f"{prefix}_top1": float(sums[1]) / n,
            f"{prefix}_top5": float(sums[2]) / n, f"{prefix}_count": int(sums[3])}


# -- distributed helpers ------------------------------------------------------------------

class _Dist:
    def __init__(self, world: int, device: torch.device) -> None:
        self.world = world
        self.device = device
        self.on = world > 1

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if not self.on:
            return values
        t = values.to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def max(self, value: int) -> int:
        if not self.on:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any]:
        if not self.on:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if not self.on:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def rank_seed(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, rank, 0x70C4]).generate_state(1)[0])


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


# -- files --------------------------------------------------------------------------------

def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def checkpoint_path(out_dir: str | Path, epoch: int) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / f"epoch-{epoch:04d}.pt"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    folder = Path(out_dir) / CHECKPOINT_DIR
    found = sorted(folder.glob("epoch-*.pt")) if folder.is_dir() else []
    return found[-1] if found else None


def trained_weights(out_dir: str | Path, config: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights rank 0 exported into ``out_dir``: the best epoch's (``export="best"``) or the last's."""
    best = Path(out_dir) / CHECKPOINT_DIR / BEST_FILE
    path = best if config.export == "best" and best.is_file() else latest_checkpoint(out_dir)
    if path is None:
        raise FileNotFoundError(f"{out_dir}/{CHECKPOINT_DIR} holds no checkpoint")
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _write_curves(out_dir: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    _atomic_bytes(out_dir / CURVES_FILE, buffer.getvalue().encode())


# -- the rank function --------------------------------------------------------------------

RESULT_PATH_ENV = "SPARKVISION_RANK0_RESULT"


def publish_rank0_result(value: Any) -> None:
    """On rank 0, pickle ``value`` to the file named by ``$SPARKVISION_RANK0_RESULT`` (once)."""
    path = os.environ.get(RESULT_PATH_ENV)
    if not path or int(os.environ.get("RANK", "0")) != 0 or os.path.exists(path):
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        pickle.dump(value, handle)
    os.replace(tmp, path)


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


def _train(job: TrainJob, rank: int, world: int, device: torch.device) -> dict[str, Any] | None:
    from sparkvision.training.augment import BatchAugmenter
    from sparkvision.training.data import augment_rng, epoch_order, load_shard, read_index
    from sparkvision.training.losses import build_loss
    from sparkvision.training.schedules import build_optimizer, build_scheduler

    cfg = job.config
    comm = _Dist(world, device)
    lead = rank == 0
    out_dir = Path(job.out_dir)
    progress: TextIO | None = None
    if lead and job.progress_tty:
        try:
            progress = open(job.progress_tty, "w")  # noqa: SIM115 - closed at the end
        except OSError:
            progress = None

    started = time.perf_counter()
    train_index = read_index(job.train_uri)
    train = load_shard(train_index, job.classes, job.preprocess, rank, world, job.decode, progress, "decode train")
    indexes = {"train": train_index}
    val = None
    if job.val_uri:
        indexes["val"] = read_index(job.val_uri)
        val = load_shard(indexes["val"], job.classes, job.preprocess, rank, world, job.decode, progress,
                         "decode val")
    if comm.max(int(len(train) == 0)):
        raise ValueError(f"a rank got no usable training rows from {job.train_uri}: fewer rows than workers?")
    decode_errors = comm.gather({"train": train.decode_errors, "val": val.decode_errors if val else {}})
    preprocess = job.preprocess
    if cfg.model.normalize == "data":
        preprocess = _data_normalization(train.images, preprocess, comm)
    load_seconds = time.perf_counter() - started

    torch.manual_seed(cfg.seed)
    model, groups, frozen = build_model(cfg.model, len(job.classes), preprocess.channels)
    model.to(device)
    if cfg.model.init_from:
        _check_given_network(model, preprocess, len(job.classes), device, cfg.model.init_from)
    masks = ChannelMasks.of_zero_channels(model) if cfg.model.keep_pruned else None
    if masks is not None and lead:
        log.info("keeping %d pruned output channels of %d convolutions at zero", masks.channels, len(masks))
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    torch.manual_seed(rank_seed(cfg.seed, rank))

    local_batch = cfg.batch_size // world
    shard_len = comm.max(len(train))
    if shard_len == 0:
        raise ValueError(f"no usable training rows in {job.train_uri}")
    steps = math.ceil(shard_len / local_batch)
    optimizer = build_optimizer(groups, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.epochs, steps)
    loss_fn = build_loss(cfg.loss, job.class_counts).to(device)
    augmenter = BatchAugmenter(cfg.augment, len(job.classes)) if cfg.augment.any else None
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    monitor = cfg.monitor if val is not None else "train_loss"
    maximize = monitor.endswith("top1")

    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "best_epoch": 0, "best_state": None,
                             "since_best": 0, "stopped_early": False}
    resumed_from = None
    if cfg.checkpoint.resume:
        resumed_from = _resume(job, comm, rank, model, optimizer, scheduler, state, device)

    writer = None
    if lead:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / TENSORBOARD_DIR), purge_step=state["epoch"] + 1 if state["epoch"] else None)

    while state["epoch"] < cfg.epochs and not state["stopped_early"]:
        epoch = state["epoch"]
        net.train()
        for module in frozen:
            module.eval()
        order = epoch_order(len(train), shard_len, cfg.seed, epoch, rank)
        arng = augment_rng(cfg.seed, epoch, rank)
        sums = torch.zeros(3, dtype=torch.float64)
        bar = _epoch_bar(progress, steps, epoch, cfg.epochs)
        lr_used = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        for step in range(steps):
            idx = order[step * local_batch: (step + 1) * local_batch]
            x = torch.from_numpy(train.images[idx]).to(device).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
            y = torch.from_numpy(train.labels[idx]).to(device)
            targets = y
            if augmenter is not None:
                x, targets = augmenter(x, y, arng)
            x = (x - mean) / std
            logits = net(x)
            loss = loss_fn(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optimizer.grad_clip_norm:
                nn.utils.clip_grad_norm_(trainable, cfg.optimizer.grad_clip_norm)
            optimizer.step()
            if masks is not None:
                masks.apply()
            scheduler.step()
            n = len(idx)
            sums[0] += loss.item() * n
            sums[1] += (logits.argmax(1) == y).sum().item()
            sums[2] += n
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        train_seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if masks is not None:
            sample = torch.from_numpy(train.images[order[:local_batch]]).to(device).permute(0, 3, 1, 2).float()
            settle_batch_norms(model, (sample.div_(255.0) - mean) / std)
        totals = comm.sum(sums)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "lr": lr_used,
            "train_loss": float(totals[0] / totals[2]), "train_top1": float(totals[1] / totals[2]),
        }
        if val is not None:
            vsum = comm.sum(evaluate_counts(model, val.images, val.labels, preprocess, device,
                                            cfg.data.eval_batch_size))
            record.update({k: v for k, v in counts_to_metrics(vsum, "val").items() if not k.endswith("count")})
        record["epoch_seconds"] = time.perf_counter() - t0
        # Throughput is the slowest rank's: the epoch is as fast as it.
        slowest = comm.max(int(train_seconds * 1e6)) / 1e6
        record["train_samples_per_s"] = float(totals[2]) / max(slowest, 1e-9)
        state["history"].append(record)
        state["epoch"] = epoch + 1
        value = record[monitor]
        improved = state["best"] is None or (value > state["best"] if maximize else value < state["best"])
        if improved:
            state.update(best=value, best_epoch=epoch + 1, since_best=0,
                         best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            state["since_best"] += 1
        if cfg.patience is not None and val is not None and state["since_best"] >= cfg.patience:
            state["stopped_early"] = True
        rng_states = comm.gather(_rng_state(device))
        if lead:
            _log_epoch(record, cfg.epochs, improved)
            for key in CURVE_COLUMNS[1:]:
                if key in record:
                    writer.add_scalar(key.replace("_", "/", 1), record[key], epoch + 1)  # type: ignore[union-attr]
            writer.flush()  # type: ignore[union-attr]
            _write_curves(out_dir, state["history"])
            if improved:
                _atomic_bytes(out_dir / CHECKPOINT_DIR / BEST_FILE,
                              _torch_bytes({"epoch": epoch + 1, "model": state["best_state"], "metrics": record}))
            _save_checkpoint(job, preprocess, model, optimizer, scheduler, state, rng_states)
        if state["stopped_early"] and lead:
            log.info("early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                     monitor, cfg.patience, state["best"], state["best_epoch"])

    # The exported weights: the best epoch's, or the last.
    if cfg.export == "best" and state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    final: dict[str, Any] = {}
    if val is not None:
        final.update(counts_to_metrics(comm.sum(evaluate_counts(model, val.images, val.labels, preprocess, device,
                                                                cfg.data.eval_batch_size)), "val"))
    del train
    if job.test_uri:
        indexes["test"] = read_index(job.test_uri)
        test = load_shard(indexes["test"], job.classes, preprocess, rank, world, job.decode, progress,
                          "decode test")
        final.update(counts_to_metrics(comm.sum(evaluate_counts(model, test.images, test.labels, preprocess, device,
                                                                cfg.data.eval_batch_size)), "test"))
        decode_errors.extend(comm.gather({"test": test.decode_errors}))
    if progress is not None:
        progress.close()
    if not lead:
        return None
    writer.close()  # type: ignore[union-attr]
    history = state["history"]
    exported_epoch = state["best_epoch"] if cfg.export == "best" and state["best_state"] is not None else state["epoch"]
    metrics = {
        **final,
        "exported_epoch": exported_epoch,
        "best_epoch": state["best_epoch"],
        "monitor": monitor,
        "epochs_run": state["epoch"],
        "stopped_early": state["stopped_early"],
        "train_loss": history[-1]["train_loss"] if history else None,
        "train_top1": history[-1]["train_top1"] if history else None,
        "train_samples_per_s": float(np.median([h["train_samples_per_s"] for h in history])) if history else None,
        "data_load_seconds": load_seconds,
        "workers": world,
        "skipped_rows": _merge_counts(decode_errors, indexes, job.classes),
    }
    if resumed_from is not None:
        metrics["resumed_from_epoch"] = resumed_from
    return _write_model_dir(job, preprocess, model, val, metrics, history)


def _check_given_network(model: nn.Module, preprocess: PreprocessConfig, classes: int, device: torch.device,
                         source: str) -> None:
    """A given network must have one output per class of the data. Parameters its forward
    never uses (e.g. a backbone's own classifier under another head) are frozen: DDP
    requires every trainable parameter to get a gradient."""
    height, width = preprocess.size
    was_training = model.training
    model.eval()  # batch-norm statistics stay as given
    out = model(torch.zeros(1, preprocess.channels, height, width, device=device))
    if out.dim() != 2 or out.shape[1] != classes:
        raise ValueError(f"the network in {source} gives outputs of shape {tuple(out.shape)}, "
                         f"not one per class of the data ({classes})")
    out.float().sum().backward()
    unused = [p for p in model.parameters() if p.requires_grad and p.grad is None]
    for p in unused:
        p.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if unused:
        log.debug("%d parameters of %s are not used by its forward and stay fixed", len(unused), source)


def _data_normalization(images: np.ndarray, preprocess: PreprocessConfig, comm: _Dist) -> PreprocessConfig:
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


def _merge_counts(decode_errors: list[dict[str, dict[str, int]]], indexes: dict[str, Any],
                  classes: list[str]) -> dict[str, Any]:
    """Rows left out of each part, by reason: error kinds from ingest or decoding, missing
    or unknown labels (nothing is dropped silently)."""
    merged: dict[str, dict[str, int]] = {}
    for per_rank in decode_errors:
        for part, counts in per_rank.items():
            bucket = merged.setdefault(part, {})
            for kind, n in counts.items():
                bucket[kind] = bucket.get(kind, 0) + n
    class_index = {c: i for i, c in enumerate(classes)}
    for part, index in indexes.items():
        bucket = merged.setdefault(part, {})
        for kind, n in index.skipped(class_index).items():
            bucket[kind] = bucket.get(kind, 0) + n
    return {part: counts for part, counts in merged.items() if counts}


def _epoch_bar(progress: TextIO | None, steps: int, epoch: int, epochs: int):
    if progress is None:
        return None
    from tqdm import tqdm

    return tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", file=progress, leave=True,
                dynamic_ncols=True)


def _log_epoch(record: dict[str, Any], epochs: int, improved: bool) -> None:
    parts = [f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:.4g}",
             f"train loss {record['train_loss']:.4f} top1 {record['train_top1']:.4f}"]
    if "val_loss" in record:
        parts.append(f"val loss {record['val_loss']:.4f} top1 {record['val_top1']:.4f} top5 {record['val_top5']:.4f}")
    parts.append(f"{record['train_samples_per_s']:.0f} samples/s")
    log.info("%s%s", ", ".join(parts), " *" if improved else "")


def _save_checkpoint(job: TrainJob, preprocess: PreprocessConfig, model: nn.Module, optimizer, scheduler,
                     state: dict[str, Any], rng_states: list[dict[str, Any]]) -> None:
    epoch = state["epoch"]
    payload = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": {k: v for k, v in state.items() if k != "epoch"},
        "rng": rng_states,
        "config": job.config.to_dict(),
        "classes": job.classes,
        "preprocess": preprocess.to_dict(),
    }
    path = checkpoint_path(job.out_dir, epoch)
    _atomic_bytes(path, _torch_bytes(payload))
    keep = max(1, job.config.checkpoint.keep_last)
    for old in sorted(path.parent.glob("epoch-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)


def _resume(job: TrainJob, comm: _Dist, rank: int, model: nn.Module, optimizer, scheduler, state: dict[str, Any],
            device: torch.device) -> int | None:
    """Load the newest checkpoint on rank 0 and share it with every rank."""
    payload = None
    if rank == 0:
        path = latest_checkpoint(job.out_dir)
        if path is not None:
            payload = torch.load(path, map_location="cpu", weights_only=False)
            log.info("resuming from %s (epoch %d done)", path, payload["epoch"])
    payload = comm.broadcast(payload)
    if payload is None:
        if rank == 0:
            log.info("no checkpoint in %s; starting from the beginning", Path(job.out_dir) / CHECKPOINT_DIR)
        return None
    saved = TrainConfig.from_dict(payload["config"])
    if saved.training_identity() != job.config.training_identity():
        raise ValueError("the checkpoint was made with a different training configuration; "
                         "resume with the same settings (only --epochs and --patience may change)")
    if payload["classes"] != job.classes:
        raise ValueError(f"the checkpoint's classes {payload['classes']} differ from the data's {job.classes}")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    state.update(payload["state"])
    state["epoch"] = payload["epoch"]
    # Asking for more epochs than before lifts an early stop only if patience allows.
    rngs = payload["rng"]
    if len(rngs) == comm.world:
        _set_rng_state(rngs[rank], device)
    elif rank == 0:
        log.warning("checkpoint made with %d workers, resuming with %d: dropout draws will differ", len(rngs),
                    comm.world)
    return int(payload["epoch"])


def _write_model_dir(job: TrainJob, preprocess: PreprocessConfig, model: nn.Module, val, metrics: dict[str, Any],
                     history: list[dict[str, Any]]) -> dict[str, Any]:
    from sparkvision.models.model_dir import ONNX_FILE, ModelCard, save_card
    from sparkvision.models.onnx_export import export_onnx

    out_dir = Path(job.out_dir)
    cpu_model = copy.deepcopy(model).cpu().eval()
    height, width = preprocess.size
    onnx_file = export_onnx(cpu_model, out_dir / ONNX_FILE, (preprocess.channels, height, width), with_features=False)
    metrics["onnx_max_abs_diff"] = _onnx_agreement(cpu_model, onnx_file, val, preprocess)
    card = ModelCard(
        name=job.name, kind="onnx", labels=list(job.classes), preprocess=preprocess, architecture=job.config.model.arch,
        provenance={**job.provenance, "config": job.config.to_dict(), "class_counts": dict(zip(job.classes,
                    job.class_counts, strict=True)), "torch_version": torch.__version__},
        metrics=metrics,
    )
    save_card(out_dir, card)
    log.info("model written to %s", out_dir)
    return {"out": str(out_dir), "metrics": metrics, "history": history, "labels": list(job.classes),
            "preprocess": preprocess.to_dict()}


def _onnx_agreement(model: nn.Module, onnx_file: Path, val, preprocess: PreprocessConfig) -> float | None:
    """Largest |ONNX - torch| logit difference on up to 64 validation images (a self-check)."""
    if val is None or not len(val):
        return None
    import onnxruntime as ort

    from sparkvision.preprocess import Normalizer

    x = Normalizer(preprocess.mean, preprocess.std)(val.images[:64])
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    return float(np.abs(got - want).max())
