"""Spark ML stages: pretrained-CNN featurizer, ImageNet/ONNX predictor, transfer-learning pipelines."""

from sparkvision.ml.classifier import TransferModel, fit_transfer
from sparkvision.ml.featurizer import ImageFeaturizer
from sparkvision.ml.predictor import ImagePredictor

__all__ = ["ImageFeaturizer", "ImagePredictor", "TransferModel", "fit_transfer"]
