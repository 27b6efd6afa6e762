"""Running an exported detector without Spark: encoded images in, boxes on the original images out.

:class:`DetectorRunner` is the detection sibling of
:class:`~sparkvision.models.runner.ClassifierRunner`: the same loading (model directory,
ONNX Runtime session per process, preprocessing from the card), with the card's
letterbox preprocessing, the graph's ``boxes``/``scores`` outputs and the one decoder
(:func:`sparkvision.detection.postprocess.decode`) that maps detections back to each
image's own pixels. Spark's ``detect``, the HTTP server and tiling all use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sparkvision.config import PreprocessConfig
from sparkvision.detection.postprocess import DecodeSettings, Detections, decode, letterbox_of
from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.models.runner import Images, OnnxImageRunner, RowOutputs

OUTPUTS = {"boxes": "boxes", "scores": "scores"}


class DetectorRunner(OnnxImageRunner):
    """An exported detector: outputs ``boxes`` (N, A, 4) in input pixels and ``scores`` (N, A, classes)."""

    def __init__(self, model: bytes | Callable[[], bytes], preprocess: PreprocessConfig, *,
                 settings: DecodeSettings | None = None, **options: Any) -> None:
        super().__init__(model, preprocess, **options)
        missing = [o for o in OUTPUTS if o not in self.outputs]
        if missing:
            raise ValueError(f"model {self.name!r} is not a detector: no {missing} output(s) "
                             f"(outputs: {sorted(self.outputs)})")
        letterbox_of(1, 1, preprocess)  # refuses a crop, which would lose objects
        self.settings = settings or DecodeSettings()

    def with_settings(self, settings: DecodeSettings) -> DetectorRunner:
        self.settings = settings
        return self

    def detect_tensor(self, tensor: np.ndarray, sizes: np.ndarray) -> list[Detections]:
        """Detections of a preprocessed batch whose originals were ``sizes`` (width, height) each."""
        boxes, scores = self.run(tensor, list(OUTPUTS))
        return self.decode_outputs(boxes, scores, sizes)

    def decode_outputs(self, boxes: np.ndarray, scores: np.ndarray, sizes: np.ndarray,
                       settings: DecodeSettings | None = None) -> list[Detections]:
        """The graph's outputs for images of ``sizes`` (width, height) -> detections in their pixels.

        ``settings`` (default: the runner's) lets a caller such as the server vary thresholds per request.
        """
        labels = self.labels or []
        if labels and scores.shape[-1] != len(labels):
            raise ImageError(ErrorKind.MODEL,
                             f"the detector gives {scores.shape[-1]} class scores but has {len(labels)} labels")
        settings = settings or self.settings
        return [decode(b, s, settings, letterbox_of(int(w), int(h), self.config))
                for b, s, (w, h) in zip(boxes, scores, sizes, strict=True)]

    def detect(self, images: Images) -> RowOutputs[list[Detections]]:
        """Detections for encoded images; a row that does not decode or run gets an error instead."""
        rows = self.run_images(images, list(OUTPUTS))
        if not len(rows.index):
            return rows.with_values([])
        boxes, scores = rows.values
        try:
            return rows.with_values(self.decode_outputs(boxes, scores, rows.sizes))
        except ImageError as exc:  # the graph disagrees with the card: every row says so
            errors = [exc.message if e is None else e for e in rows.errors]
            return RowOutputs([], np.empty(0, dtype=np.int64), errors, np.empty((0, 2), dtype=np.int64))

    def detect_records(self, images: Images) -> tuple[list[list[dict] | None], list[str | None]]:
        """Per input: the ``boxes`` column's records (label, score, xmin, ymin, xmax, ymax) or None, and the error."""
        rows = self.detect(images)
        labels = self.labels or [str(i) for i in range(1 << 16)]
        return rows.per_input([d.records(labels) for d in rows.values]), rows.errors
