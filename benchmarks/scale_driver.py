"""The driver of ``bench_scale``'s featurize phase, in its own process so its memory is its own.

    python benchmarks/scale_driver.py --master spark://... --dataset DS --out FEATURES

Reads a sparkvision dataset, featurizes every row with ``ImageFeaturizer`` and writes
(path, label, features, error) as Parquet through ``atomic_output``. Nothing comes back
to the driver but counts: the rows are checked with Spark aggregations on the written
files. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--master", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from pyspark.sql import functions as F

    from sparkvision import storage
    from sparkvision.config import SparkSettings
    from sparkvision.io import read_dataset
    from sparkvision.ml.featurizer import ImageFeaturizer
    from sparkvision.session import get_spark

    spark = get_spark(SparkSettings(master=args.master, app_name="bench-scale-featurize", driver_memory="1g",
                                    executor_memory="1g"))
    frame = read_dataset(spark, args.dataset)
    started = time.perf_counter()
    featurizer = ImageFeaturizer()
    features = featurizer.transform(frame).select("path", "label", "features", "error")
    with storage.atomic_dir(args.out, spark, overwrite=True) as staging:
        features.write.parquet(staging)
    seconds = time.perf_counter() - started
    written = spark.read.parquet(args.out)
    row = written.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("path").alias("paths"),
                      F.count("error").alias("errors"), F.count("features").alias("with_features")).first()
    result = {**row.asDict(), "featurize_s": seconds, "rows_processed": featurizer.rows_processed,
              "driver_python_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
              "pid": os.getpid()}
    spark.stop()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
