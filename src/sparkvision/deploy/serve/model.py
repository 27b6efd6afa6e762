"""The model a server holds: its ONNX session, labels and preprocessing, read from a model directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from sparkvision.config import DecodeSettings
from sparkvision.models.model_dir import ModelCard, load_card, onnx_path
from sparkvision.models.runtime import OnnxModel
from sparkvision.preprocess import ImagePreprocessor


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


class ServedModel:
    """Decoding through the card's preprocessing, and class probabilities from ``logits``."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, max_pixels: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.card: ModelCard = load_card(self.model_dir)
        try:
            self.path = onnx_path(self.model_dir, self.card)
        except FileNotFoundError as exc:
            hint = " (run 'sparkvision export MODEL_DIR' to add one)" if self.card.kind == "spark_pipeline" else ""
            raise FileNotFoundError(f"{exc}{hint}") from None
        self.session = OnnxModel(self.path, threads=threads or os.cpu_count() or 1)
        if "logits" not in self.session.output_names:
            raise ValueError(f"{self.path} has no 'logits' output (outputs: {self.session.output_names})")
        decode = DecodeSettings(max_pixels=max_pixels) if max_pixels else DecodeSettings()
        self.preprocessor = ImagePreprocessor(self.card.preprocess, decode)
        self.labels = list(self.card.labels)
        self.version = hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]

    @property
    def input_shape(self) -> list[int]:
        height, width = self.card.preprocess.size
        return [self.card.preprocess.channels, height, width]

    def preprocess(self, data: bytes) -> np.ndarray:
        """One image as a (1, C, H, W) float32 tensor; raises ``sparkvision.io.ImageError``."""
        pixels = self.preprocessor.load(data)
        return self.preprocessor.normalize(pixels[None])

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (n, classes) in the card's label order."""
        logits = self.session.run(batch, ["logits"])[0]
        if logits.shape != (len(batch), len(self.labels)):
            raise RuntimeError(f"model gave scores of shape {logits.shape} for {len(batch)} images and "
                               f"{len(self.labels)} labels")
        return softmax(logits)

    def top_k(self, probabilities: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        k = min(k, len(self.labels))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [[{"label": self.labels[j], "probability": float(row[j])} for j in idx]
                for row, idx in zip(probabilities, order, strict=True)]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.card.name,
            "version": self.version,
            "kind": self.card.kind,
            "architecture": self.card.architecture,
            "classes": self.labels,
            "num_classes": len(self.labels),
            "input_size": self.input_shape,
            "preprocess": self.card.preprocess.to_dict(),
            "created": self.card.created,
            "sparkvision_version": self.card.sparkvision_version,
        }

