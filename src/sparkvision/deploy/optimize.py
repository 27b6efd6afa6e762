"""``sparkvision optimize``: prune and/or quantise a model directory, measure, and write it only if it holds up.

Steps: rebuild and prune the torch model (``--prune``), optionally fine-tune it through
the training engine with the pruned channels held at zero (``--fine-tune-train``), export to ONNX, quantise to
int8 (``--int8``, calibration images read through the ingestion layer), then measure
the result against the original on validation images. The optimised model directory
(kind ``onnx``: it serves without Spark) gets ``model.onnx``, the original's labels and
preprocessing, and ``optimization.json``; its card's metrics hold the same report.
When accuracy drops more than allowed nothing is written unless forced. A model saved
by an older ``sparkvision fit`` without ``model.onnx`` is exported first.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparkvision.config import MeasureSettings, PruneSettings, QuantizeSettings
from sparkvision.deploy.export import HEAD_FILE, copy_model_dir, ensure_onnx
from sparkvision.deploy.measure import (
    ImageSet,
    OptimizationReport,
    check_accuracy_drop,
    compare,
    measure_models,
    read_image_rows,
    to_image_set,
)
from sparkvision.models.model_dir import ONNX_FILE, ModelCard, load_card, save_card
from sparkvision.progress import spark_progress

if TYPE_CHECKING:  # prune imports torch; the CLI imports this module before it needs torch
    from sparkvision.deploy.prune import FineTuneRequest

log = logging.getLogger(__name__)

REPORT_FILE = "optimization.json"


@dataclass
class OptimizeRequest:
    """What to do to a model directory (the CLI's options, typed)."""

    int8: bool = False
    prune: PruneSettings | None = None
    #: Fine-tune after pruning (through ``sparkvision.training.fit``); needs ``prune``.
    fine_tune: FineTuneRequest | None = None
    quantize: QuantizeSettings = field(default_factory=QuantizeSettings)
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    calibration: str | None = None
    val: str | None = None
    force: bool = False
    overwrite: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "int8": asdict(self.quantize) if self.int8 else None,
            "prune": asdict(self.prune) if self.prune else None,
            "fine_tune": ({"train": self.fine_tune.train, "val": self.fine_tune.val,
                           "config": self.fine_tune.train_config().to_dict()} if self.fine_tune else None),
            "calibration_source": self.calibration,
        }


def _images(spark, request: OptimizeRequest, card: ModelCard) -> tuple[ImageSet | None, ImageSet]:
    """Calibration and validation images. Without ``val``, the validation images are the
    calibration source's rows after the calibration ones (never the same images)."""
    q, m = request.quantize, request.measure
    calibration = None
    n_cal = q.calibration_images if request.int8 else 0
    if request.int8 and not request.calibration:
        raise ValueError("--int8 needs --calibration SRC (images like those the model will see)")
    if request.val:
        if n_cal:
            calibration = to_image_set(read_image_rows(spark, request.calibration, n_cal, q.seed), card.preprocess,
                                       request.calibration)
        val_rows = read_image_rows(spark, request.val, m.val_images, m.seed)
        val = to_image_set(val_rows, card.preprocess, request.val)
    else:
        src = request.calibration
        if not src:
            raise ValueError("pass --val SRC (labelled validation images) to measure the optimised model")
        rows = read_image_rows(spark, src, n_cal + m.val_images, q.seed)
        if n_cal:
            calibration = to_image_set(rows[:n_cal], card.preprocess, src)
        val = to_image_set(rows[n_cal:], card.preprocess, f"{src} (rows after the calibration images)")
        if len(val) < 50:
            log.warning("only %d validation images left after calibration; pass --val for a sound measurement",
                        len(val))
    if calibration is not None and not len(calibration):
        raise ValueError(f"no decodable calibration images in {request.calibration}")
    return calibration, val


def optimize_model(spark, model_dir: str | Path, out_dir: str | Path, request: OptimizeRequest) -> OptimizationReport:
    """Optimise ``model_dir`` into ``out_dir``; raises ``AccuracyDropError`` (nothing written) when refused."""
    from sparkvision.deploy.prune import (
        export_pruned,
        fine_tune_pruned,
        gzip_size,
        prune_channels,
        torch_model,
    )
    from sparkvision.deploy.quantize import quantize_model

    if not request.int8 and request.prune is None:
        raise ValueError("nothing to do: pass --int8 and/or --prune AMOUNT")
    if request.fine_tune is not None and request.prune is None:
        raise ValueError("fine-tuning is for a pruned model: pass --prune AMOUNT with --fine-tune-train")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if model_dir.resolve() == out_dir.resolve():
        raise ValueError("--out must be a new directory, not the model being optimised")
    if out_dir.exists() and any(out_dir.iterdir()) and not request.overwrite:
        raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    fp32 = ensure_onnx(model_dir, spark)  # a model saved by an older 'fit' is exported first
    card = load_card(model_dir)
    with spark_progress(spark, "read images"):
        calibration, val = _images(spark, request, card)
    with tempfile.TemporaryDirectory(prefix="sv-optimize-") as tmp:
        current = fp32
        details: dict[str, Any] = {}
        if request.prune is not None:
            model = torch_model(model_dir, card)
            summary = prune_channels(model, request.prune)
            current = export_pruned(model, Path(tmp) / "pruned.onnx", card)
            pruned_only = current
            fine_tune = None
            if request.fine_tune is not None:
                fine_tune = fine_tune_pruned(spark, model, card, request.fine_tune, Path(tmp) / "fine-tune")
                current = export_pruned(model, Path(tmp) / "fine-tuned.onnx", card)
            details["prune"] = {**summary.to_dict(), "gzip_bytes_before": gzip_size(fp32),
                                "gzip_bytes_after": gzip_size(current),
                                "finetuned": fine_tune is not None,
                                **({"fine_tune": fine_tune} if fine_tune else {})}
        if request.int8:
            current = quantize_model(current, Path(tmp) / "int8.onnx", request.quantize,
                                     calibration.tensor if calibration is not None else None)
            details["int8"] = {"calibration_images_used": len(calibration) if calibration is not None else 0}
        models = {"baseline": fp32, "optimized": current}
        if request.fine_tune is not None:
            models["pruned, before fine-tuning"] = pruned_only
        measured = measure_models(models, val, card.labels, request.measure)
        if request.fine_tune is not None:
            # What pruning cost and what fine-tuning won back, on the same images.
            details["prune"]["accuracy"] = {
                "before": measured["baseline"].accuracy,
                "after_prune": measured["pruned, before fine-tuning"].accuracy,
                "after_fine_tune" + ("_and_int8" if request.int8 else ""): measured["optimized"].accuracy,
            }
        optimization = request.describe()
        for key, extra in details.items():
            optimization[key] = {**(optimization.get(key) or {}), **extra}
        report = compare(measured["baseline"], measured["optimized"], optimization, val,
                         request.measure.max_accuracy_drop, forced=request.force)
        log.info("%s", report.summary())
        if not report.accepted and not request.force:
            report.optimized["path"] = None  # refused: nothing is written
        check_accuracy_drop(report, force=request.force)
        if not report.accepted:
            log.warning("accuracy dropped %.2f points, more than %.2f; writing anyway (--force)",
                        report.accuracy_drop_points or 0.0, report.max_accuracy_drop)
        _write(model_dir, out_dir, card, current, report, request)
    return report


def _write(model_dir: Path, out_dir: Path, card: ModelCard, model: Path, report: OptimizationReport,
           request: OptimizeRequest) -> None:
    copy_model_dir(model_dir, out_dir, overwrite=request.overwrite,
                   skip=(ONNX_FILE, "spark_pipeline", "checkpoints", "tensorboard", HEAD_FILE, "metrics.json"))
    shutil.copyfile(model, out_dir / ONNX_FILE)
    report.optimized["path"] = str(out_dir / ONNX_FILE)
    suffix = "-".join(p for p in ("pruned" if request.prune else "", "int8" if request.int8 else "") if p)
    data = report.to_dict()
    optimized = ModelCard(
        name=f"{card.name}-{suffix}", kind="onnx", labels=list(card.labels), preprocess=card.preprocess,
        architecture=card.architecture, onnx=ONNX_FILE,
        provenance={"parent": str(model_dir.resolve()), "parent_name": card.name, "parent_kind": card.kind,
                    "optimization": data["optimization"]},
        metrics={"optimization": {k: v for k, v in data.items() if k != "optimization"},
                 **({"parent": card.metrics} if card.metrics else {})},
    )
    save_card(out_dir, optimized)
    (out_dir / REPORT_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    log.info("optimised model written to %s", out_dir)
