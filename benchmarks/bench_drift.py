"""``sparkvision drift``: seconds per 100k prediction rows, and per sampled image.

Two parts, as the monitor has two:

* Prediction signals (class shares, confidence, errors) over every row of the window:
  synthetic predictions (``sparkvision.testing.synthetic_predictions``, 10 classes, with
  ``predicted_at`` spread over 48 hours) written as Parquet, 100k and 1M rows; timed is
  what ``drift`` does with them: read, take the latest ``--window 1d`` (one aggregation
  for the newest time, then a filter), count classes and confidence bins in one
  ``groupBy``, and compare with a profile (made the same way from 20k other rows).
* Image and feature signals over a bounded sample: the real ``check_drift`` on a model
  fitted on imagenette-mini (10 photos per class) and its predictions of the 400 val
  photos, with ``--sample 400``: the photos re-read by path, headers probed, the model's
  own featurizer (EfficientNet-Lite0) run, sizes, modes and feature moments aggregated.
  That cost depends on ``--sample`` (default 1,000), not on the rows.

    .venv/bin/python benchmarks/run.py drift
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import IMAGENETTE, Result, table  # noqa: E402

TITLE = "Drift monitor: time per 100k prediction rows and per sampled image"
MASTER = "local[2]"


def _stamped(spark, rows: int, seed: int):
    from pyspark.sql import functions as F

    from sparkvision.testing.synthetic_predictions import synthetic_predictions

    frame = synthetic_predictions(spark, rows, classes=10, seed=seed)
    # Spread over 48 hours, newest now: --window 1d keeps about half.
    offset = (F.xxhash64("path", F.lit(seed)) % F.lit(48 * 3600)).cast("long")
    return frame.withColumn("predicted_at", (F.unix_timestamp(F.current_timestamp()) - F.abs(offset))
                            .cast("timestamp"))


def _prediction_signals(spark, path: str, profile) -> tuple[float, int]:
    from sparkvision.drift.spark import latest_window, prediction_counts
    from sparkvision.drift.stats import Snapshot, compare

    start = time.perf_counter()
    window, _ = latest_window(spark.read.parquet(path), timedelta(days=1))
    current = Snapshot(**prediction_counts(window, profile.labels))
    compare(profile, current)
    return time.perf_counter() - start, current.rows


def run(quick: bool = False) -> Result:
    from sparkvision.config import SparkSettings
    from sparkvision.drift.spark import check_drift, prediction_counts
    from sparkvision.drift.stats import Profile, Snapshot
    from sparkvision.inference.predict import predict
    from sparkvision.io import load_images
    from sparkvision.ml.classifier import fit_from_sources
    from sparkvision.session import get_spark
    from sparkvision.testing.synthetic_predictions import synthetic_labels

    spark = get_spark(SparkSettings(master=MASTER, driver_memory="2g", app_name="bench-drift"))
    work = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    try:
        labels = synthetic_labels(10)
        reference = Snapshot(**prediction_counts(_stamped(spark, 20_000, 1), labels))
        profile = Profile(labels=labels, reference=reference, source="synthetic")
        sizes = [100_000, 1_000_000] if not quick else [20_000, 100_000]
        rows_table = []
        figures: dict = {"prediction_signals": {}}
        for n in sizes:
            path = str(work / f"predictions-{n}")
            _stamped(spark, n, 2).write.parquet(path)
            _prediction_signals(spark, path, profile)  # warm: workers up, code paths compiled
            seconds = min(_prediction_signals(spark, path, profile)[0] for _ in range(3))
            per_100k = seconds * 100_000 / n
            rows_table.append([f"{n:,}", round(seconds, 2), round(per_100k, 2)])
            figures["prediction_signals"][n] = {"seconds": seconds, "seconds_per_100k": per_100k}

        model_dir = work / "model"
        fit_from_sources(spark, str(IMAGENETTE / "train"), str(model_dir), val_src=str(IMAGENETTE / "val"),
                         per_class=10, val_per_class=10)
        predictions = str(work / "val-predictions")
        predict(spark, model_dir, load_images(spark, str(IMAGENETTE / "val"), probe="header"), predictions)
        sample = 100 if quick else 400
        check_drift(spark, model_dir, predictions, sample=20)  # warm
        start = time.perf_counter()
        report = check_drift(spark, model_dir, predictions, sample=sample)
        seconds = time.perf_counter() - start
        figures["sampled"] = {"images": report.sampled_images, "seconds": seconds,
                              "seconds_per_1000_images": seconds * 1000 / report.sampled_images,
                              "drifted": report.drifted}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_100k = figures["prediction_signals"][sizes[0]]["seconds_per_100k"]
    markdown = (
        f"Prediction signals (class shares, confidence histogram, errors) over synthetic predictions with "
        f"`predicted_at`, `--window 1d` (about half the rows), Spark {MASTER}, best of 3 warm runs:\n\n"
        + table(["rows in the set", "seconds", "seconds per 100k rows"], rows_table)
        + f"\n\nImage and feature signals: `check_drift` on 400 real predictions of a fitted Lite0 model with "
        f"`--sample {sample}` took {figures['sampled']['seconds']:.1f} s for {report.sampled_images} re-read "
        f"images ({figures['sampled']['seconds_per_1000_images']:.1f} s per 1,000 sampled images, including the "
        "prediction signals over the 400 rows); it grows with `--sample`, not with the rows.\n\n"
        f"So `drift` on a window of 100k predictions with the default `--sample 1000` costs about "
        f"{per_100k:.1f} s for the rows (mostly the fixed cost of two Spark jobs: {sizes[-1]:,} rows take "
        f"{figures['prediction_signals'][sizes[-1]]['seconds']:.1f} s) plus "
        f"{figures['sampled']['seconds_per_1000_images']:.0f} s for the images on these 2 cores."
    )
    return Result(markdown, figures)
