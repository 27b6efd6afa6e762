"""Drift monitoring: is a model still seeing the kind of images it was validated on?

``fit`` and ``train`` store a reference profile in the model directory
(``drift_profile.json``: predicted-class shares, the confidence histogram, image sizes
and modes, the per-dimension mean and variance of the model's pooled features on its
held-out validation images). ``sparkvision drift`` compares a predictions set, or its
latest window, with it and exits non-zero when a signal passes its threshold.

:mod:`.stats` (the statistics and the profile's shape) imports without Spark;
:mod:`.spark` aggregates the snapshots in Spark.
"""

from sparkvision.drift.stats import (
    PROFILE_FILE,
    Profile,
    Signal,
    Snapshot,
    Thresholds,
    category_psi,
    compare,
    feature_shift,
    has_profile,
    load_profile,
    psi,
)

__all__ = ["PROFILE_FILE", "Profile", "Signal", "Snapshot", "Thresholds", "category_psi", "compare",
           "feature_shift", "has_profile", "load_profile", "psi"]
