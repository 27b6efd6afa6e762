"""int8 quantisation of a model's ONNX graph with ONNX Runtime's own tools.

Static quantisation (QDQ) needs activation ranges, which come from calibration images
read through the ingestion layer and the model's :class:`ImagePreprocessor`, exactly
as serving and batch prediction will feed it. Measured on efficientnet_lite0 here
(README "Deployment"): static with per-channel weights kept accuracy within a point at
more than twice the fp32 throughput; per-tensor weights lost more accuracy; dynamic
quantisation (ConvInteger, ranges computed per call) ran at a few images per second.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from sparkvision.config import QuantizeSettings
from sparkvision.progress import local_progress

log = logging.getLogger(__name__)

_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
_CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class TensorCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed images to ONNX Runtime's calibrator, ``batch`` at a time."""

    def __init__(self, tensor: np.ndarray, input_name: str = "input", batch: int = 16) -> None:
        if tensor.ndim != 4 or not len(tensor):
            raise ValueError(f"calibration needs a non-empty NCHW batch, got shape {tensor.shape}")
        self.tensor = np.ascontiguousarray(tensor, dtype=np.float32)
        self.input_name = input_name
        self.batch = batch
        self._next = 0
        self._bar = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.tensor):
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            return None
        if self._bar is None:
            self._bar = local_progress(None, "calibrate", total=len(self.tensor), unit="img")
        chunk = self.tensor[self._next:self._next + self.batch]
        self._next += self.batch
        self._bar.update(len(chunk))
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.tensor)


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantiser logs one INFO line per adjusted weight scale through the
    root logger; keep those (and only those: records of named loggers pass) off the console."""
    root = logging.getLogger()
    quiet = _BelowWarning()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def input_name(model_path: str | Path) -> str:
    return onnx.load(str(model_path), load_external_data=False).graph.input[0].name


def quantize_model(
    model_path: str | Path,
    out_path: str | Path,
    settings: QuantizeSettings | None = None,
    calibration: np.ndarray | None = None,
    exclude_nodes: list[str] | None = None,
) -> Path:
    """Write an int8 version of ``model_path`` to ``out_path``.

    ``calibration`` (float32 NCHW, already preprocessed) is required for static
    quantisation. Outputs keep their names, so the result is a drop-in model.onnx.
    """
    settings = settings or QuantizeSettings()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".sv-quant-", dir=out_path.parent) as tmp:
        source = Path(model_path)
        if settings.preprocess_graph:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared))
            source = prepared
        staged = Path(tmp) / "quantized.onnx"
        with _quiet_root_logger():
            _quantize(source, staged, settings, calibration, exclude_nodes)
        staged.replace(out_path)
    log.info("int8 model written to %s (%.2f MB)", out_path, out_path.stat().st_size / 1e6)
    return out_path


def _quantize(source: Path, staged: Path, settings: QuantizeSettings, calibration: np.ndarray | None,
              exclude_nodes: list[str] | None) -> None:
    if settings.method == "dynamic":
        quantize_dynamic(str(source), str(staged), per_channel=settings.per_channel,
                         weight_type=_TYPES[settings.weight_type], nodes_to_exclude=exclude_nodes)
    else:
        if calibration is None:
            raise ValueError("static quantisation needs calibration images")
        batch = settings.calibration_batch
        if settings.calibrate_method != "minmax" and len(calibration) > batch and len(calibration) % batch:
            # ONNX Runtime's histogram calibrators stack every batch's activations into one array, so a
            # shorter last batch fails there ("inhomogeneous shape"): whole batches only.
            calibration = calibration[: len(calibration) - len(calibration) % batch]
        reader = TensorCalibrationReader(calibration, input_name(source), batch)
        log.info("calibrating on %d images (%s), per-channel weights: %s", len(reader),
                 settings.calibrate_method, settings.per_channel)
        quantize_static(
            str(source), str(staged), reader, quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
            activation_type=_TYPES[settings.activation_type], weight_type=_TYPES[settings.weight_type],
            calibrate_method=_CALIBRATION[settings.calibrate_method], nodes_to_exclude=exclude_nodes,
        )
