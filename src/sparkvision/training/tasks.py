"""What a run learns: the task-specific half of the training engine.

The epoch loop in :mod:`.engine` is the same for every task: ranks and DDP, the
optimiser and schedule, checkpoints and resuming, early stopping, TensorBoard and
``curves.csv``. A :class:`Task` supplies everything that depends on what the network
predicts. One instance lives on each rank; the loop calls, in this order:

``load(uri, part, rank, world, progress)``
    This rank's shard of a dataset part (``train``, ``val``, ``test``): an object with
    ``len()``, ``images`` (decoded uint8 NHWC, used for data normalisation and
    batch-norm settling), ``decode_errors`` (this shard's rows that did not decode, by
    kind) and ``skipped`` (the part's rows that cannot be used at all, by reason; the
    same on every rank). Targets (labels, boxes) are the task's own fields.
``prepare(preprocess)``
    The final preprocessing (after ``normalize="data"``): build the loss, augmenter,
    normalisation. The base class keeps ``self.preprocess`` and :meth:`Task.normalized`.
``build_model()``
    The network on ``self.device``, its parameter groups (each with ``lr_mult``) and the
    modules kept frozen (:func:`.modelbuild.build_model` does the classifier's).
``train_batch(shard, rows, rng)``
    A :class:`Batch` for the shard's ``rows``: normalised ``inputs`` on the device and
    ``targets``. Augmentation happens here, drawn from ``rng`` (seeded by seed, epoch,
    rank), and transforms whatever the targets need (boxes move with the pixels).
``loss(outputs, batch)``
    The scalar to minimise, from the network's outputs and the batch's targets.
``train_counts(outputs, batch)``
    float64 sums for this batch (``len(train_metric_names)`` entries) that
    ``train_metrics(counts, samples)`` turns into ``train_<name>`` values once summed
    over steps and ranks. The loop itself keeps the mean loss (``train_loss``).
``evaluate(model, shard)``
    float64 counts over a shard that add up across ranks (the loop sums them with the
    collective); ``metrics(counts, prefix)`` turns the sum into ``{prefix}_{name}`` for
    every name of ``eval_metric_names``, plus ``{prefix}_count`` (rows evaluated).
``export(model, metrics, check_images)``
    Rank 0 writes the model directory (ONNX graph, card of the task's kind) and returns
    the metrics the card carries.

``maximize`` names the metrics where larger is better (a monitored one picks the best
epoch by its maximum); every other metric is minimised. ``curve_columns()`` is the
header of ``curves.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TextIO

import numpy as np
import torch
from torch import nn

from sparkvision.config import PreprocessConfig
from sparkvision.training.job import TrainJob


class Shard(Protocol):
    """One rank's decoded rows of a dataset part, as the loop sees them."""

    images: np.ndarray
    decode_errors: dict[str, int]
    skipped: dict[str, int]

    def __len__(self) -> int: ...


@dataclass
class Batch:
    """A training batch: normalised inputs on the device and the targets the loss takes."""

    inputs: torch.Tensor
    targets: Any


def memory_format_for(device: torch.device) -> torch.memory_format:
    """How a training step lays out its tensors: channels-last on a CPU, where oneDNN's convolutions
    train 1.5x faster so (EfficientNet-Lite0 at 112 and 224 px, LeNet-5 at 28 px, measured on 2 cores)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


class Task:
    """The task-specific steps of a training run (see the module docstring for the protocol)."""

    name: ClassVar[str]
    #: ``train_<name>`` metrics besides ``train_loss``, one per :meth:`train_counts` entry.
    train_metric_names: ClassVar[tuple[str, ...]] = ()
    #: ``val_<name>`` / ``test_<name>`` metrics that :meth:`metrics` gives.
    eval_metric_names: ClassVar[tuple[str, ...]] = ("loss",)
    #: Metrics where larger is better.
    maximize: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, job: TrainJob, device: torch.device) -> None:
        self.job = job
        self.config = job.config
        self.device = device
        self.preprocess = job.preprocess
        #: The batches' memory format; the engine puts the network in it too.
        self.memory_format = memory_format_for(device)

    @classmethod
    def curve_columns(cls) -> list[str]:
        """Columns of ``curves.csv`` (and TensorBoard scalars, after ``epoch``)."""
        return ["epoch", "lr", "train_loss", *(f"train_{n}" for n in cls.train_metric_names),
                *(f"val_{n}" for n in cls.eval_metric_names), "epoch_seconds", "train_samples_per_s"]

    @classmethod
    def check_monitor(cls, monitor: str) -> None:
        """Refuse a monitored metric this task does not measure (on the driver, before any job)."""
        columns = cls.curve_columns()
        if monitor not in columns:
            raise ValueError(f"monitor {monitor!r} is not a metric of the {cls.name} task; "
                             f"choose one of {[c for c in columns if c.startswith('val_')]}")

    @classmethod
    def data_classes(cls, uri: str) -> dict[str, int]:
        """Classes in a prepared dataset and how many examples each has (the label order is sorted)."""
        from sparkvision.training.data import read_index

        return read_index(uri).class_counts()

    #: The fewest classes a run can learn (a classifier needs two, a detector one).
    min_classes: ClassVar[int] = 2

    def load(self, uri: str, part: str, rank: int, world: int, progress: TextIO | None) -> Shard:
        raise NotImplementedError

    def prepare(self, preprocess: PreprocessConfig) -> None:
        self.preprocess = preprocess
        self._mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(preprocess.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def to_unit(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC images as a float NCHW batch in [0, 1] on the device (augmentations work on these)."""
        return torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).contiguous().float().div_(255.0)

    def normalized(self, unit: torch.Tensor) -> torch.Tensor:
        """A [0, 1] batch normalised by the run's mean/std (the network's input, in its memory format)."""
        return ((unit - self._mean) / self._std).contiguous(memory_format=self.memory_format)

    def build_model(self) -> tuple[nn.Module, list[dict], list[nn.Module]]:
        raise NotImplementedError

    def train_batch(self, shard: Any, rows: np.ndarray, rng: np.random.Generator) -> Batch:
        raise NotImplementedError

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def train_counts(self, outputs: Any, batch: Batch) -> torch.Tensor:
        return torch.zeros(len(self.train_metric_names), dtype=torch.float64)

    def train_metrics(self, counts: torch.Tensor, samples: float) -> dict[str, float]:
        return {f"train_{n}": float(counts[i] / samples) for i, n in enumerate(self.train_metric_names)}

    def evaluate(self, model: nn.Module, shard: Any) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, counts: torch.Tensor, prefix: str) -> dict[str, float]:
        raise NotImplementedError

    def export(self, model: nn.Module, metrics: dict[str, Any], check_images: np.ndarray | None) -> dict[str, Any]:
        raise NotImplementedError


class ClassificationTask(Task):
    """One label per image: cross-entropy or focal loss, top-1/top-5, an ONNX classifier."""

    name = "classify"
    train_metric_names = ("top1",)
    eval_metric_names = ("loss", "top1", "top5")
    maximize = frozenset({"train_top1", "val_top1", "val_top5"})

    def load(self, uri: str, part: str, rank: int, world: int, progress: TextIO | None) -> Shard:
        from sparkvision.training.data import load_shard, read_index

        return load_shard(read_index(uri), self.job.classes, self.job.preprocess, rank, world, self.job.decode,
                          progress, f"decode {part}")

    def prepare(self, preprocess: PreprocessConfig) -> None:
        from sparkvision.training.augment import BatchAugmenter
        from sparkvision.training.losses import build_loss

        super().prepare(preprocess)
        self.loss_fn = build_loss(self.config.loss, self.job.class_counts).to(self.device)
        augment = self.config.augment
        self.augmenter = BatchAugmenter(augment, len(self.job.classes)) if augment.any else None

    def build_model(self) -> tuple[nn.Module, list[dict], list[nn.Module]]:
        from sparkvision.training.modelbuild import build_model, freeze_unused

        model_cfg = self.config.model
        classes = len(self.job.classes)
        model, groups, frozen = build_model(model_cfg, classes, self.preprocess.channels)
        model.to(self.device)
        if model_cfg.init_from:
            # A given network must have one output per class of the data.
            height, width = self.preprocess.size
            sample = torch.zeros(1, self.preprocess.channels, height, width, device=self.device)
            out = freeze_unused(model, sample, model_cfg.init_from)
            if out.dim() != 2 or out.shape[1] != classes:
                raise ValueError(f"the network in {model_cfg.init_from} gives outputs of shape {tuple(out.shape)}, "
                                 f"not one per class of the data ({classes})")
        return model, groups, frozen

    def train_batch(self, shard: Any, rows: np.ndarray, rng: np.random.Generator) -> Batch:
        x = self.to_unit(shard.images[rows])
        y = torch.from_numpy(shard.labels[rows]).to(self.device)
        targets = y
        if self.augmenter is not None:
            x, targets = self.augmenter(x, y, rng)
        return ClassificationBatch(self.normalized(x), targets, y)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.loss_fn(outputs, batch.targets)

    def train_counts(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        correct = (outputs.argmax(1) == batch.labels).sum().item()  # type: ignore[attr-defined]
        return torch.tensor([correct], dtype=torch.float64)

    def evaluate(self, model: nn.Module, shard: Any) -> torch.Tensor:
        return evaluate_counts(model, shard.images, shard.labels, self.preprocess, self.device,
                               self.config.data.eval_batch_size, self.memory_format)

    def metrics(self, counts: torch.Tensor, prefix: str) -> dict[str, float]:
        return counts_to_metrics(counts, prefix)

    def export(self, model: nn.Module, metrics: dict[str, Any], check_images: np.ndarray | None) -> dict[str, Any]:
        from sparkvision.training.export import write_classifier

        return write_classifier(self.job, self.preprocess, model, check_images, metrics)


@dataclass
class ClassificationBatch(Batch):
    #: The hard labels (``targets`` are soft when MixUp/CutMix mixed the batch).
    labels: torch.Tensor


def evaluate_counts(model: nn.Module, images: np.ndarray, labels: np.ndarray, preprocess: PreprocessConfig,
                    device: torch.device, batch_size: int,
                    memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """float64 [cross-entropy sum, top-1 correct, top-5 correct, count] over a shard."""
    from sparkvision.preprocess import Normalizer

    normalize = Normalizer(preprocess.mean, preprocess.std)
    sums = torch.zeros(4, dtype=torch.float64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x = torch.from_numpy(normalize(images[start: start + batch_size])).to(device)
            x = x.contiguous(memory_format=memory_format)
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


#: The tasks a run can learn, by :attr:`TrainJob.task`.
TASKS: dict[str, type[Task]] = {ClassificationTask.name: ClassificationTask}


def task_class(name: str) -> type[Task]:
    if name == "detect":
        from sparkvision.training import detection  # noqa: F401 - registers the detection task
    if name not in TASKS:
        raise ValueError(f"unknown training task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def make_task(job: TrainJob, device: torch.device) -> Task:
    return task_class(job.task)(job, device)
