"""The network a run trains: from the registry or given weights, with its parameter groups.

:func:`build_model` gives the network, its parameter groups (each with an ``lr_mult``
that the schedules apply) and the stages that stay frozen. :func:`resolve_preprocess`
gives the registered architecture's preprocessing with the run's size/channel changes.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from sparkvision.config import PreprocessConfig
from sparkvision.config.training import ModelConfig

log = logging.getLogger("sparkvision.training")


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
    groups, frozen = param_groups(model, model_cfg, pretrained)
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
    groups, frozen = param_groups(model, model_cfg, pretrained=True)
    return model, groups, frozen


def param_groups(model: nn.Module, model_cfg: ModelConfig, pretrained: bool) -> tuple[list[dict], list[nn.Module]]:
    """Head and backbone parameter groups (``lr_mult``), and the frozen stages.

    The head is ``model.get_classifier()`` where the network has one (timm's convention);
    a network without one trains as a single group."""
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
        groups.append({"params": backbone, "lr_mult": backbone_mult if head_list else 1.0, "backbone": bool(head_list)})
    return groups, frozen


def freeze_unused(model: nn.Module, sample: torch.Tensor, source: str) -> torch.Tensor:
    """Run ``model`` on ``sample`` (in eval mode) and freeze the parameters its forward
    never uses (e.g. a backbone's own classifier under another head): DDP requires every
    trainable parameter to get a gradient. Returns the output, detached."""
    was_training = model.training
    model.eval()  # batch-norm statistics stay as given
    out = model(sample)
    out.float().sum().backward()
    unused = [p for p in model.parameters() if p.requires_grad and p.grad is None]
    for p in unused:
        p.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if unused:
        log.debug("%d parameters of %s are not used by its forward and stay fixed", len(unused), source)
    return out.detach()
