"""The GPU check: featurize and fine-tune on whatever device this machine has, and write figures.

``benchmarks/gpu_check.sh run`` calls this on a GPU machine, where there is no Spark and no
JVM: it runs what a Spark task and a training rank run, directly. The core's runner
featurizes the val photos (ONNX Runtime, on the CUDA provider where ``onnxruntime-gpu`` is
installed, else on CPU), torch runs the same backbone on the device in fp32 and bf16, and the
training engine's rank code fine-tunes EfficientNet-Lite0 (``--preset finetune``, shortened)
on the prepared imagenette-mini train/val datasets with ``precision`` fp32, then bf16. On a
machine without a GPU it runs the same steps on CPU, as a dry run of the script.

    python benchmarks/gpu_check.py --data .gpucheck --out .gpucheck/out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def environment() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
        "cuda": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        "onnxruntime_providers": ort.get_available_providers(), "cpus": os.cpu_count(),
    }


def _rate(fn, count: int, repeat: int = 3) -> tuple[float, Any]:
    """Images per second of ``fn`` (best of ``repeat`` after one warm-up), and the warm-up's result."""
    result = fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return count / best, result


def featurize(val_uri: str, batch: int) -> dict[str, Any]:
    """Lite0 features of the val photos: the core's runner (decode + ONNX Runtime), and torch on the device."""
    import torch

    from sparkvision.models.efficientnet_torch import build
    from sparkvision.models.runner import ClassifierRunner
    from sparkvision.training.data import read_contents, read_index

    index = read_index(val_uri)
    contents = read_contents(index, np.arange(index.rows))
    runner = ClassifierRunner.from_registry("efficientnet_lite0", threads=os.cpu_count(), batch_size=batch)
    tensor = runner.preprocess(contents).tensor
    out: dict[str, Any] = {"photos": len(contents), "batch": batch,
                           "onnxruntime_session_providers": runner.session.session.get_providers()}
    out["runner_on_jpeg_bytes"], _ = _rate(lambda: runner.features(contents), len(contents))
    out["onnxruntime_on_tensors"], reference = _rate(lambda: runner.features(tensor), len(tensor))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build(variant="efficientnet_lite0").to(device).eval()
    inputs = torch.from_numpy(tensor).to(device)

    def torch_features(dtype: torch.dtype | None) -> np.ndarray:
        parts = []
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            for i in range(0, len(inputs), batch):
                parts.append(model.forward_features(inputs[i:i + batch]).float())
        if device.type == "cuda":
            torch.cuda.synchronize()
        return torch.cat(parts).cpu().numpy()

    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        out[f"torch_{device.type}_{name}"], features = _rate(lambda dtype=dtype: torch_features(dtype), len(inputs))
        # The same features as the ONNX graph's, up to the precision used
        out[f"torch_{device.type}_{name}_max_relative_difference"] = float(
            np.abs(features - reference).max() / np.abs(reference).max())
    return out


def fine_tune(data: Path, precision: str, epochs: int, batch: int) -> dict[str, Any]:
    """The rank code of ``train --preset finetune`` (shortened) on one device, as ``sparkvision train`` runs it."""
    import torch

    from sparkvision.config.training import PRESETS, TrainConfig, apply_overrides
    from sparkvision.training.data import read_index
    from sparkvision.training.engine import run_rank
    from sparkvision.training.job import TrainJob
    from sparkvision.training.modelbuild import resolve_preprocess

    cuda = torch.cuda.is_available()
    config = apply_overrides(apply_overrides(TrainConfig(), PRESETS["finetune"]), {
        "epochs": epochs, "batch_size": batch, "scaling": {"precision": precision, "use_gpu": cuda},
        "checkpoint": {"keep_last": 1}})
    counts = read_index(str(data / "train")).class_counts()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as out:
        job = TrainJob(config=config, train_uri=str(data / "train"), val_uri=str(data / "val"), test_uri=None,
                       classes=list(counts), class_counts=list(counts.values()), preprocess=resolve_preprocess(config.model),
                       out_dir=out, name=f"gpu-check-{precision}", use_gpu=cuda, threads=os.cpu_count() or 1)
        start = time.perf_counter()
        result = run_rank(job)
        seconds = time.perf_counter() - start
    assert result is not None
    metrics, history = result["metrics"], result["history"]
    return {"precision_asked": precision, "precision_run": metrics["precision"], "device": "cuda" if cuda else "cpu",
            "epochs": epochs, "batch": batch, "val_top1": metrics["val_top1"],
            "train_samples_per_s": [h["train_samples_per_s"] for h in history],
            "epoch_seconds": [h["epoch_seconds"] for h in history], "seconds": seconds}


def markdown(figures: dict[str, Any]) -> str:
    env, feat = figures["environment"], figures["featurize"]
    device = "cuda" if env["cuda"] else "cpu"
    lines = [f"Machine: {env['gpu'] or 'no GPU'}, {env['cpus']} CPUs, Python {env['python']}, torch {env['torch']}, "
             f"ONNX Runtime {env['onnxruntime']} (providers {', '.join(env['onnxruntime_providers'])}).", "",
             f"Lite0 features of {feat['photos']} imagenette-mini val photos, batch {feat['batch']}, images/s:", "",
             "| path | images/s |", "|---|---|",
             f"| runner on JPEG bytes (decode + ONNX Runtime on {feat['onnxruntime_session_providers'][0]}) "
             f"| {feat['runner_on_jpeg_bytes']:.0f} |",
             f"| ONNX Runtime on tensors ({feat['onnxruntime_session_providers'][0]}) "
             f"| {feat['onnxruntime_on_tensors']:.0f} |"]
    for name in ("fp32", "bf16"):
        lines.append(f"| torch on {device}, {name} (max relative difference from ONNX "
                     f"{feat[f'torch_{device}_{name}_max_relative_difference']:.1e}) | {feat[f'torch_{device}_{name}']:.0f} |")
    lines += ["", "Fine-tuning Lite0 (`--preset finetune`, shortened) on imagenette-mini train, val top-1:", "",
              "| precision | device | epochs | val top-1 | train samples/s per epoch | seconds |", "|---|---|---|---|---|---|"]
    for run in figures["fine_tune"]:
        lines.append(f"| {run['precision_run']} | {run['device']} | {run['epochs']} | {run['val_top1']:.4f} | "
                     f"{', '.join(f'{r:.0f}' for r in run['train_samples_per_s'])} | {run['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(".gpucheck"), help="what gpu_check.sh prepare wrote")
    parser.add_argument("--out", type=Path, default=Path(".gpucheck/out"), help="where the figures go")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"environment": environment()}
    print(json.dumps(figures["environment"]), flush=True)
    figures["featurize"] = featurize(str(args.data / "val"), args.batch_size)
    print(json.dumps(figures["featurize"]), flush=True)
    figures["fine_tune"] = [fine_tune(args.data, precision, args.epochs, args.batch_size)
                            for precision in ("fp32", "bf16")]
    (args.out / "gpu_check.json").write_text(json.dumps(figures, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(figures))
    print(markdown(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
