"""Data-parallel CNN training on Spark: TorchDistributor, per-rank Parquet shards, a model directory out.

::

    from sparkvision.training import TrainConfig, fit, preset
    result = fit(spark, preset("bigdl-lenet"), train="fashion-mnist:train", val="fashion-mnist:test",
                 out="models/lenet")

See :mod:`.config` for every setting, :mod:`.engine` for what each rank does and
:mod:`.distributor` for how ranks are launched.
"""

from sparkvision.config import training as _recipe
from sparkvision.config.training import (
    ARCH_DEFAULTS,
    PRESETS,
    TrainConfig,
    apply_overrides,
    defaults_for,
    preset,
)


def __getattr__(name: str):
    # The launcher imports pyspark; training ranks import this package too and need not.
    if name in ("fit", "TrainResult", "run_on_ranks"):
        from sparkvision.training import distributor

        return getattr(distributor, name)
    # The recipe's parts (ScalingConfig, OptimizerConfig, ...) are sparkvision.config's; reachable here too.
    part = getattr(_recipe, name, None)
    if isinstance(part, type) and part.__module__ == _recipe.__name__:
        return part
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ARCH_DEFAULTS", "PRESETS", "TrainConfig", "TrainResult", "apply_overrides", "defaults_for", "fit", "preset",
           "run_on_ranks"]
