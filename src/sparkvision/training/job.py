"""The description of one training run that the driver sends to every rank."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sparkvision.config import DecodeSettings, PreprocessConfig
from sparkvision.config.training import TrainConfig


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
    #: What the network learns: a name in :data:`sparkvision.training.tasks.TASKS`.
    task: str = "classify"
