"""Transfer learning on the standalone cluster: fit, predict, a worker killed mid-predict, atomic re-runs.

One small model is fitted on the cluster (10 photos per class) and then held fixed:
its predictions on imagenette-mini/val must be the same on the cluster, in the
embedded run, and in a cluster run that lost a worker halfway.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_support import (
    Background,
    cli_json,
    failed_tasks,
    run_cli,
    run_cli_inprocess,
    wait_for_executors,
    wait_until_tasks_run,
)
from pyspark.sql import functions as F

pytestmark = pytest.mark.cluster

#: ~10 tasks over the 400 val photos, so a kill lands with tasks both running and waiting.
SMALL_PARTITIONS = f"spark.sql.files.maxPartitionBytes={512 * 1024}"


def compare_predictions(spark, left: str, right: str) -> dict:
    """Row counts, paths only on one side, and disagreements between two predictions outputs."""
    a = spark.read.parquet(left).alias("a")
    b = spark.read.parquet(right).alias("b")
    joined = a.join(b, "path", "full_outer")
    diff = F.aggregate(
        F.zip_with("a.probability", "b.probability", lambda x, y: F.abs(x - y)), F.lit(0.0),
        lambda acc, x: F.greatest(acc, x),
    )
    row = joined.agg(
        F.count(F.when(F.col("a.prediction").isNull() & F.col("a.error").isNull(), 1)).alias("only_right"),
        F.count(F.when(F.col("b.prediction").isNull() & F.col("b.error").isNull(), 1)).alias("only_left"),
        F.count(F.when(~F.col("a.prediction").eqNullSafe(F.col("b.prediction")), 1)).alias("different"),
        F.count(F.when(~F.col("a.label").eqNullSafe(F.col("b.label")), 1)).alias("label_different"),
        F.max(diff).alias("max_probability_diff"),
    ).first().asDict()
    row["left_rows"], row["right_rows"] = a.count(), b.count()
    row["left_distinct"] = a.select("path").distinct().count()
    return row


def test_fit_on_the_cluster_writes_a_usable_model(model_dir):
    from sparkvision.models.model_dir import load_card

    card = load_card(model_dir)
    assert card.kind == "spark_pipeline" and len(card.labels) == 10
    # 10 photos per class through a pretrained backbone already separate imagenette's classes.
    assert card.metrics["accuracy"] >= 0.8


def test_predict_on_the_cluster_equals_the_embedded_run(cluster_spark, model_dir, predictions, imagenette, tmp_path):
    embedded = str(tmp_path / "embedded")
    summary = cli_json(run_cli(["predict", "--model", str(model_dir), "--input", str(imagenette / "val"),
                                "--out", embedded, "--master", "local[2]"]))
    assert summary["rows"] == 400 and summary["errors"] == 0
    result = compare_predictions(cluster_spark, predictions, embedded)
    assert result["left_rows"] == result["right_rows"] == result["left_distinct"] == 400
    assert result["only_left"] == result["only_right"] == 0
    assert result["different"] == 0 and result["label_different"] == 0
    assert result["max_probability_diff"] < 1e-6


def test_a_worker_killed_mid_predict_changes_no_prediction(cluster, cluster_spark, model_dir, predictions,
                                                           imagenette, tmp_path):
    out = str(tmp_path / "faulty")
    job = Background(lambda: run_cli_inprocess([
        "predict", "--model", str(model_dir), "--input", str(imagenette / "val"), "--out", out,
        "--conf", SMALL_PARTITIONS,
    ]), cluster_spark, group="predict-fault")
    wait_until_tasks_run(cluster_spark, job, active=2, completed=1)
    cluster.kill_worker(0)
    assert job.result() == 0
    assert failed_tasks(cluster_spark, "predict-fault") >= 1, "the kill hit no running task"
    result = compare_predictions(cluster_spark, out, predictions)
    assert result["left_rows"] == result["left_distinct"] == 400
    assert result["only_left"] == result["only_right"] == result["different"] == 0
    assert result["max_probability_diff"] < 1e-6
    cluster.start_worker(0)
    wait_for_executors(cluster_spark, 2)


def _parts(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_predict_into_an_existing_output_refuses_or_replaces_it_whole(cluster_spark, model_dir, predictions,
                                                                      imagenette, caplog):
    target = Path(predictions)
    before = _parts(target)
    args = ["predict", "--model", str(model_dir), "--input", str(imagenette / "val"), "--out", predictions]
    assert run_cli_inprocess(args) == 1
    assert "already exists" in caplog.text
    assert _parts(target) == before  # untouched, byte for byte

    assert run_cli_inprocess([*args, "--overwrite", "--conf", SMALL_PARTITIONS]) == 0
    after = _parts(target)
    old_parts = {n for n in before if n.startswith("part-")}
    new_parts = {n for n in after if n.startswith("part-")}
    assert new_parts and not (old_parts & new_parts), "files of the old output survived the replacement"
    written = cluster_spark.read.parquet(predictions)
    assert written.count() == written.select("path").distinct().count() == 400
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no staging or retired leftovers
