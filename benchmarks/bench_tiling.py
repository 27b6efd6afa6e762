"""Tiling throughput: tiles/second through Spark vs tiling + classifying in one process, one run.

The same synthetic scene (a tiled TIFF: terrain + Fashion-MNIST objects) is tiled at
224 px with 0.1 overlap and classified by the same real "object vs background" model
(EfficientNet-Lite0 features + logistic regression, an ``onnx`` model directory):

* one process: ``iter_tiles`` (region reads, PNG tiles) then ONNX Runtime on batches of
  64 with both cores, the loop a user would write without Spark;
* Spark ``local[2]``: ``tile`` (the scene's tile rows split into work units over tasks)
  then ``classify_tiles`` (the shared batch-prediction entry point), after one warm-up.

Both are also timed tiling only. Full size adds the must-show memory run: a 20,000 x
20,000 scene tiled with the peak RSS of the processes doing the work
(``scripts/tiling_memory.py``).

    .venv/bin/python benchmarks/run.py tiling            # 4096 px scene + 20k memory run
    .venv/bin/python benchmarks/run.py tiling --quick    # 2048 px scene, 4096 px memory run
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import Result, table  # noqa: E402

TITLE = "Tiling: tiles/second through Spark vs one process, and peak memory on a 20k x 20k scene"


def _memory_script():
    spec = importlib.util.spec_from_file_location("tiling_memory", ROOT / "scripts" / "tiling_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_process(scene: Path, model_dir: Path, classify: bool) -> tuple[int, float]:
    from sparkvision.models.runner import ClassifierRunner
    from sparkvision.tiling.tiler import iter_tiles

    classifier = ClassifierRunner.from_model_dir(model_dir, threads=2, batch_size=64) if classify else None
    started = time.perf_counter()
    count, batch = 0, []
    for row in iter_tiles(str(scene)):
        count += 1
        if classifier is not None and row["content"] is not None:  # background tiles carry no bytes
            batch.append(row["content"])
            if len(batch) == 64:
                classifier.predict_proba(batch)
                batch = []
    if classifier is not None and batch:
        classifier.predict_proba(batch)
    return count, time.perf_counter() - started


def _spark(spark, scene: Path, model_dir: Path, classify: bool) -> tuple[int, float]:
    from pyspark.sql import functions as F

    from sparkvision.tiling.classify import classify_tiles
    from sparkvision.tiling.tiles import list_sources, tile

    started = time.perf_counter()
    tiles = tile(list_sources(spark, str(scene)))
    if classify:
        row = classify_tiles(tiles, model_dir).agg(F.count("prediction").alias("n"),
                                                   F.sum(F.col("probability")[1]).alias("s")).first()
    else:
        row = tiles.agg(F.count("content").alias("n"), F.sum(F.length("content")).alias("s")).first()
    return int(row["n"]), time.perf_counter() - started


def run(quick: bool = False) -> Result:
    from sparkvision.config import SparkSettings
    from sparkvision.session import get_spark
    from sparkvision.testing.synthetic_scenes import make_scene, train_object_classifier, write_tiled_tiff

    work = Path(tempfile.mkdtemp(prefix="bench-tiling-"))
    try:
        side, objects = (2048, 2) if quick else (4096, 10)
        scene = write_tiled_tiff(make_scene(side, side, objects, seed=2), work / "scene.tif")
        warm = write_tiled_tiff(make_scene(1000, 1000, 1, seed=3, object_size=(300, 400)), work / "warm.tif")
        model_dir = work / "model"
        train_object_classifier(model_dir, **({"scenes": 2, "windows_per_class": 40} if quick else {}))

        rows: list[list] = []
        figures: dict = {"scene_side": side, "tile_size": 224, "overlap": 0.1}
        for classify in (False, True):
            n, seconds = _one_process(scene, model_dir, classify)
            figures[f"one_process_{'classify' if classify else 'tile'}"] = {"tiles": n, "seconds": seconds}
        spark = get_spark(SparkSettings(master="local[2]", driver_memory="2g", app_name="bench-tiling"))
        _spark(spark, warm, model_dir, True)  # start the Python workers, load the model once
        for classify in (False, True):
            n, seconds = _spark(spark, scene, model_dir, classify)
            figures[f"spark_{'classify' if classify else 'tile'}"] = {"tiles": n, "seconds": seconds}
        spark.stop()
        for what, label in (("tile", "tiling only"), ("classify", "tiling + classifying")):
            one, par = figures[f"one_process_{what}"], figures[f"spark_{what}"]
            one_rate, par_rate = one["tiles"] / one["seconds"], par["tiles"] / par["seconds"]
            figures[f"spark_vs_one_process_{what}"] = par_rate / one_rate
            rows.append([label, one["tiles"], one_rate, par_rate, par_rate / one_rate])
        markdown = (
            f"Scene {side} x {side} px (tiled TIFF), 224 px tiles, overlap 0.1; "
            "Spark local[2] vs one Python process using both cores for ONNX Runtime.\n\n"
            + table(["work", "tiles", "one process (tiles/s)", "Spark local[2] (tiles/s)", "Spark / one process"], rows)
        )

        memory = _memory_script().run(4096 if quick else 20000, work / "memory")
        figures["memory"] = memory
        one, par = memory["one_process"], memory["spark"]
        markdown += (
            f"\n\nPeak memory tiling a {memory['scene']['side']:,} x {memory['scene']['side']:,} scene "
            f"({memory['decoded_mib']:,.0f} MiB if decoded whole):\n\n"
            + table(
                ["path", "tiles", "seconds", "peak RSS of the tiling process(es), MiB", "RSS before tiling, MiB"],
                [["one process (iter_tiles)", one["tiles"], one["seconds"], one["peak_rss_mib"], one["rss_before_mib"]],
                 [f"Spark local[2], {par['python_workers']} Python workers (max)", par["tiles"], par["seconds"],
                  par["worker_peak_rss_mib"], "-"]],
            )
        )
        return Result(markdown, figures)
    finally:
        shutil.rmtree(work, ignore_errors=True)
