"""int8 on the imagenette-mini model: images/second and accuracy vs fp32, side by side in one run.

The model is the real product path: ``fit_transfer`` (efficientnet_lite0 features +
MLlib logistic regression) on imagenette-mini/train, saved, exported to one ONNX graph
(``sparkvision export``). It is then quantised the ways ONNX Runtime offers:

* static QDQ, per-channel int8 weights, uint8 activations (``sparkvision optimize --int8``'s default)
* static QDQ, per-tensor weights (``--per-tensor``)
* dynamic (``--dynamic``: weights int8, activation ranges computed at run time)

Calibration: images of the train split read through the ingestion layer. Accuracy and
top-1 agreement: the whole val split. Throughput: ONNX Runtime alone on pre-decoded
tensors, every model timed in alternating rounds (best round counts), all threads.

    .venv/bin/python benchmarks/run.py quantize            # 300 calibration images, 400 val
    .venv/bin/python benchmarks/run.py quantize --quick    # 64 calibration images, 100 val
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import IMAGENETTE, Result, table  # noqa: E402

TITLE = "int8 quantisation of the imagenette-mini model: speed and accuracy vs fp32"


def _fit_model(spark, out: Path) -> Path:
    from sparkvision.config import TransferSettings
    from sparkvision.deploy.export import export_pipeline
    from sparkvision.io import load_images
    from sparkvision.ml.classifier import fit_transfer

    model = fit_transfer(load_images(spark, str(IMAGENETTE / "train"), probe="header"), settings=TransferSettings())
    model_dir = model.save(str(out), name="imagenette-mini-logreg")
    export_pipeline(spark, model_dir)
    return Path(model_dir)


def run(quick: bool) -> Result:
    from sparkvision.config import MeasureSettings, QuantizeSettings, SparkSettings
    from sparkvision.deploy.measure import compare, measure_models, read_image_set
    from sparkvision.deploy.quantize import quantize_model
    from sparkvision.models.model_dir import load_card, onnx_path
    from sparkvision.session import get_spark

    n_cal, n_val = (64, 100) if quick else (300, 400)
    measure = MeasureSettings(val_images=n_val, bench_images=64 if quick else 256, rounds=2 if quick else 3)
    spark = get_spark(SparkSettings(master="local[2]", driver_memory="3g", app_name="bench-quantize"))
    work = Path(tempfile.mkdtemp(prefix="sv-bench-quant-"))
    started = time.perf_counter()
    model_dir = _fit_model(spark, work / "model")
    fit_s = time.perf_counter() - started
    card = load_card(model_dir)
    fp32 = onnx_path(model_dir, card)
    calibration = read_image_set(spark, str(IMAGENETTE / "train"), card.preprocess, n_cal, seed=1)
    val = read_image_set(spark, str(IMAGENETTE / "val"), card.preprocess, n_val)

    variants = {
        "static per-channel (default)": QuantizeSettings(calibration_images=n_cal),
        "static per-tensor": QuantizeSettings(calibration_images=n_cal, per_channel=False),
        "dynamic": QuantizeSettings(method="dynamic"),
    }
    paths, quant_s = {"fp32": fp32}, {}
    for name, settings in variants.items():
        t = time.perf_counter()
        paths[name] = quantize_model(fp32, work / f"{len(paths)}.onnx", settings,
                                     calibration.tensor if settings.method == "static" else None)
        quant_s[name] = time.perf_counter() - t
    # Dynamic int8 runs at a few images/s here: time it on fewer images so the run stays bounded.
    fast = {k: v for k, v in paths.items() if k != "dynamic"}
    measured = measure_models(fast, val, card.labels, measure)
    slow_settings = MeasureSettings(val_images=n_val, bench_images=16, rounds=1)
    measured.update(measure_models({"dynamic": paths["dynamic"]}, val, card.labels, slow_settings))

    base = measured["fp32"]
    rows, figures = [], {"model": str(model_dir), "fit_seconds": fit_s, "calibration_images": len(calibration),
                         "val_images": len(val), "variants": {}}
    for name, m in measured.items():
        report = compare(base, m, {"variant": name}, val, max_accuracy_drop=1.0)
        rows.append([
            name, f"{m.accuracy:.4f}", f"{0.0 - report.accuracy_drop_points:+.2f}" if name != "fp32" else "",
            f"{report.top1_agreement:.4f}", f"{m.images_per_second:.1f}",
            f"{report.speedup:.2f}x", f"{m.size_bytes / 1e6:.2f}", f"{quant_s.get(name, 0):.0f}" if name in quant_s else "",
        ])
        figures["variants"][name] = {**report.to_dict(), "quantize_seconds": quant_s.get(name)}
    default = figures["variants"]["static per-channel (default)"]
    verdict = (
        f"The default (static, per-channel) runs at **{default['speedup']:.2f}x** the fp32 images/second with "
        f"an accuracy change of **{0.0 - default['accuracy_drop_points']:+.2f} points** on {len(val)} val images "
        f"(top-1 agreement with fp32 {default['top1_agreement']:.4f}). Must-show target: >= 2x with <= 1 point "
        f"lost: **{'met' if default['speedup'] >= 2 and default['accuracy_drop_points'] <= 1 else 'NOT met'}** "
        "in this run."
    )
    markdown = "\n\n".join([
        f"Model: efficientnet_lite0 features + MLlib logistic regression fitted on imagenette-mini/train "
        f"(800 photos), exported to one ONNX graph. Calibration: {len(calibration)} train photos; "
        f"evaluation: {len(val)} val photos. Throughput: ONNX Runtime alone on pre-decoded 224 px tensors, "
        f"batch {measure.batch_size}, {os.cpu_count()} threads, models alternating, best of "
        f"{measure.rounds} rounds of {measure.bench_images} images (dynamic: 1 round of 16).",
        table(["model", "val accuracy", "points vs fp32", "top-1 agreement", "images/s", "speed vs fp32",
               "size MB", "quantise s"], rows),
        verdict,
    ])
    return Result(markdown, figures)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO)
    print(run(quick="--quick" in sys.argv).markdown)
