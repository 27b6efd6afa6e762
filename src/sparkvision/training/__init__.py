"""Data-parallel CNN training on Spark: TorchDistributor, per-rank Parquet shards, a model directory out.

::

    from sparkvision.training import TrainConfig, fit, preset
    result = fit(spark, preset("bigdl-lenet"), train="fashion-mnist:train", val="fashion-mnist:test",
                 out="models/lenet")

See :mod:`.config` for every setting, :mod:`.engine` for what each rank does and
:mod:`.distributor` for how ranks are launched.
"""

from sparkvision.training.config import (
    PRESETS,
    AugmentConfig,
    CheckpointConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    ScalingConfig,
    ScheduleConfig,
    TrainConfig,
    apply_overrides,
    preset,
)
from sparkvision.training.distributor import TrainResult, fit

__all__ = [
    "PRESETS",
    "AugmentConfig",
    "CheckpointConfig",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ScalingConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "fit",
    "preset",
]
