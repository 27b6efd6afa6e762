"""Predictions of any size made inside Spark, for scale tests of ``evaluate`` (no driver-side data).

Every value is a hash of (row id, class, seed), so a set is reproducible, identical
however it is partitioned, and never passes through the driver. Probabilities are a
softmax of Gumbel noise plus a margin on the true class, so the "model" is right
most of the time and sometimes confidently wrong, like a real one.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkvision.session import default_parallelism


def _uniform(row: F.Column, salt: int | F.Column, seed: int) -> F.Column:
    """A uniform in (0, 1) from a 64-bit hash: deterministic, unlike rand() inside a lambda."""
    bucket = F.pmod(F.xxhash64(row, salt if isinstance(salt, F.Column) else F.lit(salt), F.lit(seed)),
                    F.lit(2_147_483_647))
    return (bucket.cast("double") + 0.5) / F.lit(2_147_483_647.0)


def synthetic_labels(classes: int) -> list[str]:
    return [f"class_{i:04d}" for i in range(classes)]


def synthetic_predictions(
    spark: SparkSession,
    rows: int,
    classes: int = 10,
    seed: int = 0,
    margin: float = 2.5,
    error_rate: float = 0.01,
    unlabeled_rate: float = 0.01,
    partitions: int | None = None,
) -> DataFrame:
    """``rows`` predictions in the predictions schema, with error rows and unlabeled rows mixed in."""
    labels = synthetic_labels(classes)
    frame = spark.range(0, rows, numPartitions=partitions or default_parallelism(spark))
    row = F.col("id")
    label_index = F.floor(_uniform(row, -1, seed) * classes).cast("int")
    frame = frame.select(row, label_index.alias("_t"), _uniform(row, -2, seed).alias("_u"))
    logits = F.transform(
        F.sequence(F.lit(0), F.lit(classes - 1)),
        lambda j: -F.log(-F.log(_uniform(row, j, seed))) + F.when(j == F.col("_t"), F.lit(margin)).otherwise(0.0),
    )
    frame = frame.withColumn("_logits", logits)
    top = F.array_max("_logits")
    exp = F.transform("_logits", lambda v: F.exp(v - top))
    total = F.aggregate(exp, F.lit(0.0), lambda acc, v: acc + v)
    frame = frame.withColumn("_p", F.transform(exp, lambda v: v / total))
    names = F.array(*[F.lit(name) for name in labels])
    is_error = F.col("_u") < error_rate
    unlabeled = (F.col("_u") >= error_rate) & (F.col("_u") < error_rate + unlabeled_rate)
    prediction = F.element_at(names, F.array_position("_logits", top).cast("int"))
    return frame.select(
        F.format_string("synthetic/%09d.png", row).alias("path"),
        F.when(~unlabeled, F.element_at(names, F.col("_t") + 1)).alias("label"),
        F.when(~is_error, prediction).alias("prediction"),
        F.when(~is_error, F.col("_p")).alias("probability"),
        F.when(is_error, F.lit("corrupt: synthetic error row")).alias("error"),
    )
