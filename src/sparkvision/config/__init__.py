"""Every tunable of sparkvision in one typed place.

Other modules take these dataclasses instead of loose literals, so a default changes
here and nowhere else. ``settings`` holds the settings of ingestion, Spark, transfer
learning, evaluation, tiling and deployment; ``training`` the training recipe
(:class:`TrainConfig` and its parts, and the named presets). Environment variables
(``SPARKVISION_*``) are read only in this package.
"""

from sparkvision.config.settings import (
    DEFAULT_MAX_PIXELS,
    NORMALIZATION_PRESETS,
    TILING_MAX_PIXELS,
    ClusterSettings,
    DecodeSettings,
    DetectionEvaluationSettings,
    EvaluationSettings,
    FeaturizeSettings,
    HeatmapSettings,
    IngestSettings,
    MeasureSettings,
    PlanSettings,
    PreprocessConfig,
    PruneSettings,
    QuantizeSettings,
    ServeSettings,
    SparkSettings,
    TilingSettings,
    TransferSettings,
    cache_dir,
)
from sparkvision.config.training import (
    ARCH_DEFAULTS,
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
    defaults_for,
    preset,
)

__all__ = [
    "ARCH_DEFAULTS",
    "AugmentConfig",
    "CheckpointConfig",
    "ClusterSettings",
    "DEFAULT_MAX_PIXELS",
    "DataConfig",
    "DecodeSettings",
    "DetectionEvaluationSettings",
    "EvaluationSettings",
    "FeaturizeSettings",
    "HeatmapSettings",
    "IngestSettings",
    "LossConfig",
    "MeasureSettings",
    "PlanSettings",
    "ModelConfig",
    "NORMALIZATION_PRESETS",
    "OptimizerConfig",
    "PRESETS",
    "PreprocessConfig",
    "PruneSettings",
    "QuantizeSettings",
    "ScalingConfig",
    "ScheduleConfig",
    "ServeSettings",
    "SparkSettings",
    "TILING_MAX_PIXELS",
    "TilingSettings",
    "TrainConfig",
    "TransferSettings",
    "apply_overrides",
    "cache_dir",
    "defaults_for",
    "preset",
]
