"""Batch prediction with any sparkvision model directory (see :mod:`sparkvision.inference.predict`)."""

from sparkvision.inference.predict import (
    PREDICTION_COLUMNS,
    PREDICTIONS_SCHEMA,
    LoadedModel,
    load_model,
    predict,
)

__all__ = ["PREDICTIONS_SCHEMA", "PREDICTION_COLUMNS", "LoadedModel", "load_model", "predict"]
