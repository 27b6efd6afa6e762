"""Checkpoint files: the run's state after each epoch, the best epoch's weights, resuming.

``MODEL_DIR/checkpoints/epoch-NNNN.pt`` (the last ``keep_last`` are kept) is a
``torch.save`` of a plain dict, so any torch can read it without sparkvision's classes::

    epoch       epochs done
    model       the network's state dict
    optimizer   / scheduler: their state dicts
    state       TrainState.to_dict() (history, best, best_epoch, best_state, since_best, stopped_early)
    rng         one RNG state per rank (torch, numpy, python, cuda)
    config      TrainConfig.to_dict(); resuming requires the same training_identity()
    classes     the label order
    preprocess  PreprocessConfig.to_dict()

``best.pt`` holds ``{"epoch", "model", "metrics"}`` of the best epoch by the monitored
metric. Data order and augmentation are functions of (seed, epoch, rank) and need no
saved state; torch's global generator (dropout) is saved per rank, so a resumed run
continues the interrupted one exactly.
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparkvision.config.training import TrainConfig
from sparkvision.storage import atomic_write
from sparkvision.training.collectives import Collective

log = logging.getLogger("sparkvision.training")

CHECKPOINT_DIR = "checkpoints"
BEST_FILE = "best.pt"


@dataclass
class TrainState:
    """What the epoch loop carries from epoch to epoch (and a checkpoint restores)."""

    #: Epochs done.
    epoch: int = 0
    #: One record per epoch done: lr, train and validation metrics, timings.
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Best value of the monitored metric so far, and the epoch (1-based) it was reached.
    best: float | None = None
    best_epoch: int = 0
    #: The best epoch's weights (CPU copies).
    best_state: dict[str, torch.Tensor] | None = None
    #: Epochs since the best one.
    since_best: int = 0
    stopped_early: bool = False

    def observe(self, record: dict[str, Any], monitor: str, maximize: bool, model: nn.Module) -> bool:
        """Add an epoch's record; keep the weights if ``monitor`` improved. Returns whether it did."""
        self.history.append(record)
        self.epoch = int(record["epoch"])
        value = record[monitor]
        improved = self.best is None or (value > self.best if maximize else value < self.best)
        if improved:
            self.best, self.best_epoch, self.since_best = value, self.epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.since_best += 1
        return improved

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``state`` entry (``epoch`` is stored beside it)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "epoch"}

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> TrainState:
        return cls(epoch=int(payload["epoch"]), **payload["state"])


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


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random generators (torch, numpy, python, and CUDA on a GPU rank)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_best(out_dir: str | Path, state: TrainState, metrics: dict[str, Any]) -> None:
    """``best.pt``: the best epoch's weights and its record."""
    atomic_write(Path(out_dir) / CHECKPOINT_DIR / BEST_FILE,
                 _torch_bytes({"epoch": state.best_epoch, "model": state.best_state, "metrics": metrics}))


def save_checkpoint(out_dir: str | Path, config: TrainConfig, classes: list[str], preprocess_dict: dict[str, Any],
                    model: nn.Module, optimizer, scheduler, state: TrainState,
                    rng_states: list[dict[str, Any]]) -> Path:
    """Write epoch ``state.epoch``'s checkpoint and delete all but the newest ``keep_last``."""
    payload = {
        "epoch": state.epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": state.to_dict(),
        "rng": rng_states,
        "config": config.to_dict(),
        "classes": classes,
        "preprocess": preprocess_dict,
    }
    path = checkpoint_path(out_dir, state.epoch)
    atomic_write(path, _torch_bytes(payload))
    keep = max(1, config.checkpoint.keep_last)
    for old in sorted(path.parent.glob("epoch-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def resume(out_dir: str | Path, config: TrainConfig, classes: list[str], comm: Collective, rank: int,
           model: nn.Module, optimizer, scheduler) -> TrainState | None:
    """Load the newest checkpoint on rank 0, share it with every rank, and restore the
    model, optimiser, scheduler and this rank's RNGs from it. None: there is none."""
    payload = None
    if rank == 0:
        path = latest_checkpoint(out_dir)
        if path is not None:
            payload = torch.load(path, map_location="cpu", weights_only=False)
            log.info("resuming from %s (epoch %d done)", path, payload["epoch"])
    payload = comm.broadcast(payload)
    if payload is None:
        if rank == 0:
            log.info("no checkpoint in %s; starting from the beginning", Path(out_dir) / CHECKPOINT_DIR)
        return None
    saved = TrainConfig.from_dict(payload["config"])
    if saved.training_identity() != config.training_identity():
        raise ValueError("the checkpoint was made with a different training configuration; "
                         "resume with the same settings (only --epochs and --patience may change)")
    if payload["classes"] != classes:
        raise ValueError(f"the checkpoint's classes {payload['classes']} differ from the data's {classes}")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    rngs = payload["rng"]
    if len(rngs) == comm.world:
        set_rng_state(rngs[rank], comm.device)
    elif rank == 0:
        log.warning("checkpoint made with %d workers, resuming with %d: dropout draws will differ", len(rngs),
                    comm.world)
    return TrainState.from_checkpoint(payload)
