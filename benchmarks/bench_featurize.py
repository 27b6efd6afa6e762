"""Featurization throughput: sparkvision on Spark end to end vs the ONNX Runtime ceiling vs a tutorial UDF.

All three run in this one process on the same cores, one after the other:

* **ceiling**: ONNX Runtime alone on tensors decoded beforehand, one process, as many
  intra-op threads as cores: the model's own speed, nothing else.
* **sparkvision**: ``load_images`` (list + read + header probe) -> ``ImageFeaturizer``
  (decode + resize + normalise + ONNX Runtime, 1 thread per task, one task per core)
  -> a ``noop`` sink, through Spark ``local[cores]``. Startup (session, first job with
  Python workers starting and loading the model) is reported apart from the warm,
  steady-state runs.
* **tutorial**: the approach common tutorials show: a row-at-a-time Python UDF that
  decodes one image and runs the eager PyTorch model on it (model loaded once per
  worker, torch threads = task cores, the best case for it).

Ratios are what matters; absolute figures depend on the machine and its load.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
from common import Result, table, transform_runs

TITLE = "Featurization: Spark end to end vs ONNX Runtime ceiling vs row-at-a-time eager PyTorch UDF"
ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.featurize")


def _data_root() -> Path:
    from sparkvision.io.builtin import find_demo_data

    return find_demo_data()


def _files(quick: bool) -> list[Path]:
    root = _data_root()
    files = sorted(root.glob("train/*/*")) + sorted(root.glob("val/*/*"))
    return files[::12] if quick else files


def _subset_folder(files: list[Path], dst: Path) -> Path:
    for file in files:
        target = dst / file.parent.parent.name / file.parent.name / file.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink(file, target)
    return dst


def _ceiling(files: list[Path], threads: int, batch: int, repeat: int, backbone: str = "efficientnet_lite0") -> float:
    from sparkvision.models import get_spec
    from sparkvision.models.onnx_export import registered_onnx
    from sparkvision.models.runtime import OnnxModel
    from sparkvision.preprocess import ImagePreprocessor

    tensors = ImagePreprocessor(get_spec(backbone).preprocess)([f.read_bytes() for f in files]).tensor
    model = OnnxModel(registered_onnx(backbone), threads=threads)
    model.run_batched(tensors[: batch * 2], "features", batch)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        model.run_batched(tensors, "features", batch)
        best = min(best, time.perf_counter() - start)
    return len(tensors) / best


def _spark_runs(spark, folder: Path, rows: int, repeat: int) -> tuple[float, list[float]]:
    from sparkvision.ml.featurizer import ImageFeaturizer

    return transform_runs(spark, ImageFeaturizer(), folder, rows, repeat)


def _tutorial_udf(spark, folder: Path, threads: int) -> float:
    """A row-at-a-time UDF with eager PyTorch, as in common tutorials (this process's worker setup)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    from sparkvision.io import load_images

    def featurize(content: bytes):
        import io
        import sys

        import torch
        from PIL import Image

        # One model per Python worker process, as a module-level global would give
        # (this function is pickled by value, so a closure variable would not survive tasks).
        model = getattr(sys, "_bench_tutorial_model", None)
        if model is None:
            from sparkvision.models import create_model

            torch.set_num_threads(threads)
            model = create_model("efficientnet_lite0", pretrained=True).eval()
            sys._bench_tutorial_model = model
        img = Image.open(io.BytesIO(content)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)
        with torch.no_grad():
            return model.forward_features(x)[0].tolist()

    udf = F.udf(featurize, ArrayType(FloatType()))
    frame = load_images(spark, str(folder), probe="header")
    count = frame.count()
    job = frame.select("path", udf("content").alias("features")).write.format("noop").mode("overwrite")
    job.save()  # warm-up: every worker has loaded its model, as in sparkvision's warm runs
    start = time.perf_counter()
    job.save()
    return count / (time.perf_counter() - start)


def run(quick: bool) -> Result:
    import tempfile

    from sparkvision.config import FeaturizeSettings, SparkSettings
    from sparkvision.models.onnx_export import registered_onnx
    from sparkvision.session import get_spark

    cores = os.cpu_count() or 2
    files = _files(quick)
    tutorial_files = files[:: (4 if not quick else 2)]
    repeat = 1 if quick else 2
    batch = FeaturizeSettings.batch_size
    registered_onnx("efficientnet_lite0")  # exported before anything is timed
    with tempfile.TemporaryDirectory(prefix="bench-featurize-") as tmp:
        folder = _subset_folder(files, Path(tmp) / "all")
        tutorial_folder = _subset_folder(tutorial_files, Path(tmp) / "tutorial")
        ceiling_before = _ceiling(files, cores, batch, repeat)
        started = time.perf_counter()
        spark = get_spark(SparkSettings(master=f"local[{cores}]", driver_memory="2g", app_name="bench-featurize"))
        session_s = time.perf_counter() - started
        try:
            first_s, warm = _spark_runs(spark, folder, len(files), repeat)
            tutorial = _tutorial_udf(spark, tutorial_folder, threads=1)
        finally:
            spark.stop()
        ceiling_after = _ceiling(files, cores, batch, repeat)
    ceiling = max(ceiling_before, ceiling_after)
    spark_warm = len(files) / min(warm)
    spark_first = len(files) / first_s
    figures = {
        "images": len(files),
        "tutorial_images": len(tutorial_files),
        "cores": cores,
        "batch_size": batch,
        "ceiling_img_s": ceiling,
        "ceiling_runs_img_s": [ceiling_before, ceiling_after],
        "spark_warm_img_s": spark_warm,
        "spark_warm_runs_s": warm,
        "spark_first_run_img_s": spark_first,
        "spark_first_run_s": first_s,
        "spark_session_start_s": session_s,
        "tutorial_udf_img_s": tutorial,
        "spark_warm_vs_ceiling": spark_warm / ceiling,
        "spark_first_vs_ceiling": spark_first / ceiling,
        "tutorial_vs_ceiling": tutorial / ceiling,
        "spark_warm_vs_tutorial": spark_warm / tutorial,
        "target_spark_vs_ceiling": 0.85,
    }
    rows = [
        ["ONNX Runtime alone, pre-decoded tensors, 1 process, "
         f"{cores} threads (ceiling)", ceiling, 1.0],
        [f"sparkvision on Spark local[{cores}], read + decode + ONNX, warm", spark_warm, spark_warm / ceiling],
        ["  same, first run (Python workers start, model loads)", spark_first, spark_first / ceiling],
        ["row-at-a-time UDF + eager PyTorch (tutorial approach)", tutorial, tutorial / ceiling],
    ]
    markdown = (
        f"{len(files)} real 224 px JPEGs (imagenette-mini; the tutorial UDF runs on {len(tutorial_files)} of them), "
        f"EfficientNet-Lite0 pooled features, batch {batch}, {cores} cores.\n\n"
        + table(["path", "images/s", "vs ceiling"], rows)
        + f"\n\nStartup, apart from the above: Spark session {session_s:.1f} s; the first featurize job took "
        f"{first_s:.1f} s against {min(warm):.1f} s warm. sparkvision is {spark_warm / tutorial:.1f}x the "
        f"tutorial UDF. Target: Spark end to end >= 0.85 of the ceiling; measured "
        f"{spark_warm / ceiling:.2f}.\n"
    )
    return Result(markdown, figures)


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("SPARKVISION_CACHE", str(ROOT / ".cache" / "sparkvision"))
    logging.basicConfig(level=logging.INFO)
    result = run(quick=args.quick)
    print(result.markdown)
    print(json.dumps(result.figures, indent=2))
