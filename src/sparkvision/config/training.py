"""Training configuration: small typed objects, one per concern (Ray Train's shape).

:class:`TrainConfig` collects them; every default lives here. ``PRESETS`` are named
recipes applied over the defaults (``--preset bigdl-lenet``) and under the user's own
flags. Everything is a frozen dataclass of plain values, so a config pickles to the
ranks, is written to the model card's provenance, and compares equal on ``--resume``.
Each validates when it is made (:mod:`.validation`: ``Literal`` fields from their
types, ranges here), so a bad setting fails on the driver, before any Spark job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal

from sparkvision.config.validation import Validated

Monitor = Literal["val_loss", "val_top1", "val_map50"]


@dataclass(frozen=True)
class ModelConfig(Validated):
    """Which network, and for a pretrained backbone which parts train."""

    arch: str = "lenet5"
    #: Start from the registry's pretrained weights (default: when it has them).
    pretrained: bool | None = None
    #: Fine-tuning: only the last N of the backbone's ``stages()`` train, plus the new
    #: head (0 = head only). None trains every layer.
    unfreeze_stages: int | None = None
    #: Learning rate of the backbone's trainable stages relative to the head's.
    backbone_lr_mult: float = 0.1
    #: Fine-tuning warm-up: the first N epochs train the new head only (the backbone kept
    #: as pretrained, batch-norm statistics included), so the random head's large early
    #: gradients never reach the pretrained weights; then the unfrozen stages join.
    head_epochs: int = 0
    #: Override of the architecture's dropout, where it has one.
    dropout: float | None = None
    #: Input size (height, width) and channels instead of the registered model's.
    image_size: tuple[int, int] | None = None
    channels: Literal[1, 3] | None = None
    #: ``model``: the registry's mean/std; ``data``: the training set's per-channel
    #: mean/std (as the BigDL LeNet example does), written into the model card.
    normalize: Literal["model", "data"] = "model"
    #: Start from these weights instead of the registry's: a file written by
    #: ``torch.save`` holding a whole ``nn.Module`` (any network, e.g. a pruned model
    #: directory's), a state dict of ``arch``, or a sparkvision checkpoint. Every rank
    #: reads it, so on a cluster it must be on storage all executors see.
    init_from: str | None = None
    #: Convolution output channels whose filters are all zero in the starting weights
    #: (pruned channels) stay exactly zero: their masks are re-applied after every
    #: optimiser step, so fine-tuning a pruned network keeps it pruned.
    keep_pruned: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unfreeze_stages is not None and self.unfreeze_stages < 0:
            raise ValueError(f"unfreeze_stages must be >= 0, got {self.unfreeze_stages}")
        if self.head_epochs < 0:
            raise ValueError(f"head_epochs must be >= 0, got {self.head_epochs}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"image_size is (height, width) in pixels, got {self.image_size}")


@dataclass(frozen=True)
class OptimizerConfig(Validated):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    #: Clip the global gradient norm to this value (None: no clipping).
    grad_clip_norm: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lr", "momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be > 0 (or None), got {self.grad_clip_norm}")


@dataclass(frozen=True)
class ScheduleConfig(Validated):
    """Learning rate over iterations. All schedules step once per optimiser step.

    * ``constant``: ``lr``.
    * ``decay``: BigDL/Torch7 SGD's ``lr / (1 + decay * iteration)``.
    * ``step``: ``lr * gamma ** floor(epoch / step_epochs)`` (epoch = iteration / steps per epoch).
    * ``cosine``: linear warm-up from ``warmup_start`` * lr over ``warmup_epochs``, then
      cosine down to ``min_lr_ratio`` * lr at the last iteration.
    * ``onecycle``: torch's OneCycleLR with ``lr`` as the peak (cosine annealing, momentum cycled).
    """

    name: Literal["constant", "decay", "step", "cosine", "onecycle"] = "constant"
    decay: float = 0.0
    step_epochs: int = 10
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup_start: float = 0.01
    min_lr_ratio: float = 0.0
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_epochs < 1:
            raise ValueError(f"step_epochs must be >= 1, got {self.step_epochs}")


@dataclass(frozen=True)
class LossConfig(Validated):
    name: Literal["cross_entropy", "focal"] = "cross_entropy"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    #: ``none``, ``balanced`` (n / (classes * count), scikit-learn's rule, from the
    #: training set's counts) or one weight per class in label order.
    class_weights: Literal["none", "balanced"] | tuple[float, ...] = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1], got {self.label_smoothing}")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {self.focal_gamma}")


@dataclass(frozen=True)
class AugmentConfig(Validated):
    """Batch augmentations on the workers; each is off at its zero value."""

    #: Probability of a random resized crop per image, with its area and aspect ranges.
    crop_prob: float = 0.0
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    #: Probability of a horizontal flip (wrong for digits and text; off by default).
    hflip_prob: float = 0.0
    #: Uniform rotation in [-degrees, degrees].
    rotation_degrees: float = 0.0
    #: Brightness/contrast/saturation factors drawn from [1 - s, 1 + s].
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    #: Gaussian blur with probability ``blur_prob``, sigma uniform in ``blur_sigma`` (pixels).
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    #: Random erasing (cutout) with probability ``erase_prob``: a rectangle of
    #: ``erase_scale`` of the area, aspect in ``erase_ratio``, filled with noise.
    erase_prob: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.25)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    #: MixUp / CutMix Beta(alpha, alpha); with both on, each batch uses one of them
    #: (CutMix with ``cutmix_switch_prob``), as timm does. ``mix_prob`` batches are mixed.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutmix_switch_prob: float = 0.5
    mix_prob: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("crop_prob", "hflip_prob", "blur_prob", "erase_prob", "cutmix_switch_prob", "mix_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("rotation_degrees", "brightness", "contrast", "saturation", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def geometric(self) -> bool:
        return self.crop_prob > 0 or self.hflip_prob > 0 or self.rotation_degrees > 0

    @property
    def any(self) -> bool:
        return (self.geometric or self.brightness > 0 or self.contrast > 0 or self.saturation > 0
                or self.blur_prob > 0 or self.erase_prob > 0 or self.mixup_alpha > 0 or self.cutmix_alpha > 0)


@dataclass(frozen=True)
class ScalingConfig(Validated):
    """How many ranks, on what."""

    workers: int = 1
    #: None: GPUs when torch sees CUDA (nccl), else CPU (gloo).
    use_gpu: bool | None = None
    #: Mixed precision of the training step: ``bf16`` runs forward and loss under
    #: ``torch.autocast`` in bfloat16 (weights, gradients and the optimiser stay fp32; no
    #: loss scaling is needed, unlike fp16). ``auto``: bf16 on a GPU that supports it, fp32
    #: on CPU, where bf16's gain depends on the CPU's bf16 instructions. Validation and the
    #: export stay fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: torch intra-op threads per rank; None: the cores of this machine divided by the
    #: workers (local mode) or ``spark.task.cpus`` (cluster mode).
    threads_per_worker: int | None = None
    #: None: local (ranks are processes on the driver) when the master is ``local[...]``,
    #: else one barrier task per rank on the executors.
    local_mode: bool | None = None


@dataclass(frozen=True)
class CheckpointConfig(Validated):
    #: Checkpoints kept besides the best model's (older ones are deleted).
    keep_last: int = 2
    #: Continue from the newest checkpoint in ``MODEL_DIR/checkpoints``.
    resume: bool = False


@dataclass(frozen=True)
class DataConfig(Validated):
    #: Carve stratified val/test parts out of the training source (seeded; used when
    #: no separate source is given for that part).
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    #: Where sources that are not yet Parquet datasets are written for the ranks to
    #: read (default MODEL_DIR/.work; on a cluster, a URI every executor can read).
    work_dir: str | None = None
    #: Keep those datasets after training (default: removed on success).
    keep_work: bool = False
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")


@dataclass(frozen=True)
class TrainConfig(Validated):
    epochs: int = 10
    #: Global batch size: each of K workers takes batch_size / K per step, so results
    #: do not depend on K.
    batch_size: int = 128
    seed: int = 42
    #: Stop after this many epochs without improvement of ``monitor`` (None: never).
    patience: int | None = None
    monitor: Monitor = "val_loss"
    #: Export the best epoch's weights (by ``monitor``) or the last epoch's.
    export: Literal["best", "last"] = "best"
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.scaling.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.scaling.workers}")
        if self.batch_size < self.scaling.workers or self.batch_size % self.scaling.workers:
            raise ValueError(
                f"the global batch size ({self.batch_size}) must be a multiple of the workers "
                f"({self.scaling.workers}) so every rank takes the same share"
            )
        if not 0 <= self.data.val_fraction < 1 or not 0 <= self.data.test_fraction < 1:
            raise ValueError("val/test fractions must be in [0, 1)")
        if self.data.val_fraction + self.data.test_fraction >= 1:
            raise ValueError("val + test fractions must leave something to train on")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.model.head_epochs >= self.epochs:
            raise ValueError(f"head_epochs ({self.model.head_epochs}) must leave epochs ({self.epochs}) in which "
                             "the backbone trains")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)

    def training_identity(self) -> dict[str, Any]:
        """What must not change between a run and its ``--resume`` (epochs may grow)."""
        data = self.to_dict()
        for key in ("epochs", "patience", "checkpoint"):
            data.pop(key)
        data["data"].pop("keep_work")
        data["scaling"].pop("local_mode")
        return data


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default) and isinstance(value, dict):
            value = _from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


#: Named recipes. ``bigdl-lenet`` is the LeNet-5 recipe of BigDL's Python example:
#: SGD lr 0.4 without momentum, learning-rate decay 0.0002 (lr / (1 + 0.0002 * iteration)),
#: batch 2048, 20 epochs, inputs normalised by the training set's mean and std.
PRESETS: dict[str, dict[str, Any]] = {
    # Object detection (``train --task detect``): FCOS-Lite on pretrained EfficientNet-Lite0,
    # AdamW with a warm-up and cosine decay, the stride-2..8 stages kept as pretrained
    # (most of the compute, little to gain); the best epoch by validation mAP@0.5.
    "fcos-detect": {
        "epochs": 12,
        "batch_size": 8,
        "monitor": "val_map50",
        "model": {"arch": "fcos_lite0", "pretrained": True, "unfreeze_stages": 12, "backbone_lr_mult": 1.0},
        "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0001, "grad_clip_norm": 10.0},
        "schedule": {"name": "cosine", "warmup_epochs": 1.0},
        "data": {"eval_batch_size": 16},
    },
    # Fine-tuning a pretrained classifier backbone (``--backbone``, default EfficientNet-Lite0):
    # every stage and a new head at one rate (AdamW, warm-up, cosine decay), mild crops and
    # flips, label smoothing; the best epoch by val top-1. Chosen by bench_finetune: on
    # Fashion-MNIST a backbone at a tenth of the head's rate, or only the last stages, stays
    # below frozen features; every stage at the full rate passes them.
    "finetune": {
        "epochs": 10,
        "batch_size": 32,
        "monitor": "val_top1",
        "model": {"arch": "efficientnet_lite0", "pretrained": True, "unfreeze_stages": None, "backbone_lr_mult": 1.0},
        "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.05},
        "schedule": {"name": "cosine", "warmup_epochs": 1.0},
        "augment": {"crop_prob": 1.0, "crop_scale": (0.6, 1.0), "hflip_prob": 0.5},
        "loss": {"label_smoothing": 0.1},
    },
    "bigdl-lenet": {
        "epochs": 20,
        "batch_size": 2048,
        "model": {"arch": "lenet5", "normalize": "data"},
        "optimizer": {"name": "sgd", "lr": 0.4, "momentum": 0.0, "weight_decay": 0.0},
        "schedule": {"name": "decay", "decay": 0.0002},
        "loss": {"name": "cross_entropy"},
    },
}

#: Per-architecture default recipes: what ``sparkvision train --arch NAME`` (or no ``--arch``:
#: ``lenet5``) trains with when no ``--preset`` is given, applied over the generic defaults
#: above and under the user's flags. ``lenet5``'s was chosen on mnist-5k with two seeds and
#: checked on Fashion-MNIST (``benchmarks/bench_lenet_defaults.py``, BENCHMARKS.md): 0.98
#: held-out top-1 in 20 epochs, where the generic defaults reach about 0.97.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "lenet5": {
        "epochs": 20,
        "batch_size": 64,
        "model": {"normalize": "data"},
        "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.05},
        "schedule": {"name": "cosine", "warmup_epochs": 1.0},
        # Small shifts, zooms and tilts; never flips (digits and letters are not symmetric).
        "augment": {"rotation_degrees": 10.0, "crop_prob": 0.5, "crop_scale": (0.8, 1.0)},
    },
}


def defaults_for(arch: str = "lenet5") -> TrainConfig:
    """``train --arch ARCH``'s starting point: the generic defaults with ARCH's own recipe, if it has one."""
    return apply_overrides(TrainConfig(model=ModelConfig(arch=arch)), ARCH_DEFAULTS.get(arch, {}))


#: Fine-tuning a pruned network (``optimize --prune --fine-tune-train``), applied over the
#: defaults: a few epochs at a small learning rate, every layer at the same rate (the
#: pruned backbone is what must recover), pruned channels held at zero.
FINE_TUNE_PRUNED: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 32,
    "model": {"pretrained": False, "backbone_lr_mult": 1.0, "keep_pruned": True},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
    "schedule": {"name": "cosine"},
}


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """``config`` with nested ``overrides`` (``{"optimizer": {"lr": 0.1}, "epochs": 5}``) applied."""
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        current = getattr(config, key)
        if is_dataclass(current) and isinstance(value, dict):
            changes[key] = replace(current, **{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        else:
            changes[key] = value
    return replace(config, **changes)


def preset(name: str, base: TrainConfig | None = None) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return apply_overrides(base or TrainConfig(), PRESETS[name])
