"""Pixels to tensors: mode rules, resize modes, normalisation, batched for models."""

from sparkvision.preprocess.color import to_model_mode
from sparkvision.preprocess.pipeline import ImagePreprocessor, PreprocessedBatch
from sparkvision.preprocess.transforms import Normalizer, resize_image

__all__ = ["ImagePreprocessor", "Normalizer", "PreprocessedBatch", "resize_image", "to_model_mode"]
