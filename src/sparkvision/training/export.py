"""The model directory a training run ends with: ONNX graph, model card, provenance.

Rank 0 writes it after the last epoch (:meth:`.tasks.Task.export`). The ONNX graph is
checked against the torch network it came from on real validation images, and the
largest difference goes into the card's metrics (``onnx_max_abs_diff``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparkvision.config import PreprocessConfig
from sparkvision.training.job import TrainJob

log = logging.getLogger("sparkvision.training")


def provenance(job: TrainJob, **extra: Any) -> dict[str, Any]:
    """The card's provenance: the driver's, the full config, and the torch version."""
    return {**job.provenance, "config": job.config.to_dict(), **extra, "torch_version": torch.__version__}


def write_classifier(job: TrainJob, preprocess: PreprocessConfig, model: nn.Module, check_images: np.ndarray | None,
                     metrics: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.onnx`` (logits only) and the card of kind ``onnx``; return the card's metrics."""
    from sparkvision.models.model_dir import ONNX_FILE, ModelCard, save_card
    from sparkvision.models.onnx_export import export_onnx

    out_dir = Path(job.out_dir)
    cpu_model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    height, width = preprocess.size
    onnx_file = export_onnx(cpu_model, out_dir / ONNX_FILE, (preprocess.channels, height, width), with_features=False)
    metrics = {**metrics, "onnx_max_abs_diff": onnx_agreement(cpu_model, onnx_file, check_images, preprocess)}
    card = ModelCard(
        name=job.name, kind="onnx", labels=list(job.classes), preprocess=preprocess, architecture=job.config.model.arch,
        provenance=provenance(job, class_counts=dict(zip(job.classes, job.class_counts, strict=True))),
        metrics=metrics,
    )
    save_card(out_dir, card)
    log.info("model written to %s", out_dir)
    return metrics


def onnx_agreement(model: nn.Module, onnx_file: Path, images: np.ndarray | None, preprocess: PreprocessConfig,
                   output: str = "logits") -> float | None:
    """Largest |ONNX - torch| difference of ``output`` on up to 64 of ``images`` (uint8 NHWC; a self-check)."""
    if images is None or not len(images):
        return None
    import onnxruntime as ort

    from sparkvision.preprocess import Normalizer

    x = Normalizer(preprocess.mean, preprocess.std)(images[:64])
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run([output], {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    return float(np.abs(got - want).max())
