"""Optimisers and learning-rate schedules, built from torch's own classes.

Every schedule is stepped once per optimiser step (iteration), so the same config
means the same curve whatever the number of workers: the global batch size fixes the
iterations per epoch. Their ``state_dict`` goes into each checkpoint.

Parameter groups carry a ``lr_mult`` (the backbone's lower rate when fine-tuning);
each group's base rate is ``lr * lr_mult`` and every schedule scales it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import (
    LambdaLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    SequentialLR,
    StepLR,
)

from sparkvision.config.training import OptimizerConfig, ScheduleConfig


def build_optimizer(groups: Iterable[dict[str, Any]], config: OptimizerConfig) -> Optimizer:
    """``groups``: dicts with ``params`` and optionally ``lr_mult`` (default 1) and ``backbone``
    (a pretrained backbone's parameters, held during ``head_epochs``)."""
    param_groups = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        if params:
            mult = float(group.get("lr_mult", 1.0))
            param_groups.append({"params": params, "lr": config.lr * mult, "lr_mult": mult,
                                 "backbone": bool(group.get("backbone", False))})
    if not param_groups:
        raise ValueError("no trainable parameters")
    if config.name == "sgd":
        return SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                   weight_decay=config.weight_decay)
    if config.name == "adamw":
        return AdamW(param_groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    raise AssertionError(f"OptimizerConfig admitted an unhandled name {config.name!r}")


def build_scheduler(optimizer: Optimizer, config: ScheduleConfig, epochs: int, steps_per_epoch: int) -> LRScheduler:
    total = max(1, epochs * steps_per_epoch)
    if config.name == "constant":
        return LambdaLR(optimizer, lambda it: 1.0)
    if config.name == "decay":
        decay = config.decay
        return LambdaLR(optimizer, lambda it: 1.0 / (1.0 + decay * it))
    if config.name == "step":
        return StepLR(optimizer, step_size=max(1, config.step_epochs * steps_per_epoch), gamma=config.gamma)
    if config.name == "cosine":
        warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
        # A multiplier rather than CosineAnnealingLR: its one eta_min for all groups
        # would flatten the backbone's lower rate at the end.
        cosine_steps = total - warmup - 1  # reaches the minimum at the last iteration
        ratio = config.min_lr_ratio

        def cosine(it: int) -> float:
            progress = min(it, cosine_steps) / max(1, cosine_steps)
            return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        if warmup == 0:
            return LambdaLR(optimizer, cosine)
        return SequentialLR(
            optimizer,
            [LinearLR(optimizer, start_factor=config.warmup_start, end_factor=1.0, total_iters=warmup),
             LambdaLR(optimizer, cosine)],
            milestones=[warmup],
        )
    if config.name == "onecycle":
        return OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=config.pct_start, div_factor=config.div_factor, final_div_factor=config.final_div_factor,
            anneal_strategy="cos", cycle_momentum=optimizer.defaults.get("momentum", 0) > 0 or "betas" in optimizer.defaults,
        )
    raise AssertionError(f"ScheduleConfig admitted an unhandled name {config.name!r}")


def lr_curve(config: ScheduleConfig, optimizer_config: OptimizerConfig, epochs: int, steps_per_epoch: int) -> list[float]:
    """The learning rate used at each iteration (for tests, docs and plots)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([{"params": [param]}], optimizer_config)
    scheduler = build_scheduler(optimizer, config, epochs, steps_per_epoch)
    lrs = []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs
