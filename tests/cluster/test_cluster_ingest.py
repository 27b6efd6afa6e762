"""Ingest on a real standalone cluster: same rows as the embedded run, and a worker killed mid-job loses none."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cluster_support import (
    Background,
    executor_count,
    failed_tasks,
    run_cli_inprocess,
    same_rows,
    wait_for_executors,
    wait_until_tasks_run,
)
from pyspark.sql import functions as F

from sparkvision.testing.proc import descendants

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def val_on_cluster(cluster_spark, imagenette, tmp_path_factory, cluster):
    out = str(tmp_path_factory.mktemp("cluster-ingest") / "val")
    assert run_cli_inprocess(["ingest", str(imagenette / "val"), "--out", out, "--master", cluster.master_url]) == 0
    return out


def test_the_application_runs_one_executor_on_each_worker(cluster, cluster_spark):
    status = cluster.status()
    assert [w["state"] for w in status["workers"]] == ["ALIVE", "ALIVE"]
    apps = [a for a in status["activeapps"] if a["name"] == "sparkvision-cluster-tests"]
    assert len(apps) == 1 and apps[0]["cores"] == 2
    assert executor_count(cluster_spark) == 2
    # Tasks really run in Python workers under the two worker daemons, not in the driver.
    pids = set(cluster_spark.sparkContext.parallelize(range(8), 8).map(lambda _: __import__("os").getpid()).collect())
    under = {index: set(descendants(daemon.pid)) for index, daemon in enumerate(cluster.workers)}
    assert pids <= under[0] | under[1]
    assert pids & under[0] and pids & under[1]

def test_ingest_on_the_cluster_holds_every_file_once_byte_for_byte(cluster_spark, val_on_cluster, imagenette):
    # (The embedded run's rows are compared with the cluster's in test_cluster_transfer, through predict.)
    on_cluster = cluster_spark.read.parquet(val_on_cluster)
    digests = {r["path"]: (r["label"], r["sha"], r["error"]) for r in on_cluster.select(
        "path", "label", F.sha2("content", 256).alias("sha"), "error").collect()}  # 400 small rows
    files = sorted((imagenette / "val").glob("*/*"))
    expected = {f"file:{f}": (f.parent.name, hashlib.sha256(f.read_bytes()).hexdigest(), None) for f in files}
    assert on_cluster.count() == len(files) == 400
    assert digests == expected


def test_a_worker_killed_mid_ingest_loses_and_duplicates_nothing(cluster, cluster_spark, val_on_cluster,
                                                                 imagenette, tmp_path):
    out = str(tmp_path / "faulty")
    # ~10 tasks of ~40 photos: the kill lands while both executors are busy and more tasks wait.
    # (--conf reaches the running session as a runtime SQL setting, as in any reused session.)
    job = Background(lambda: run_cli_inprocess(["ingest", str(imagenette / "val"), "--out", out,
                                                "--conf", f"spark.sql.files.maxPartitionBytes={512 * 1024}"]),
                     cluster_spark, group="ingest-fault")
    wait_until_tasks_run(cluster_spark, job, active=2, completed=1)
    killed = cluster.kill_worker(1)
    assert job.result() == 0
    assert len(killed) >= 2  # the worker JVM and its executor at least
    assert failed_tasks(cluster_spark, "ingest-fault") >= 1, "the kill hit no running task"
    assert cluster.alive_workers() == 1
    written = cluster_spark.read.parquet(out)
    assert written.count() == 400
    assert written.select(F.countDistinct("path")).first()[0] == 400
    assert same_rows(written, cluster_spark.read.parquet(val_on_cluster))
    # Bring the worker back for the tests that follow; the application gets a new executor on it.
    cluster.start_worker(1)
    wait_for_executors(cluster_spark, 2)


def test_ingest_into_an_existing_output_refuses_or_replaces_it_whole(cluster_spark, val_on_cluster, imagenette,
                                                                     caplog):
    target = Path(val_on_cluster)
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    args = ["ingest", str(imagenette / "val"), "--out", val_on_cluster]
    assert run_cli_inprocess(args) == 1
    assert "already exists" in caplog.text
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before

    assert run_cli_inprocess([*args, "--overwrite"]) == 0
    new_parts = {p.name for p in target.glob("part-*")}
    assert new_parts and not (new_parts & set(before)), "files of the old dataset survived the replacement"
    written = cluster_spark.read.parquet(val_on_cluster)
    assert written.count() == written.select("path").distinct().count() == 400
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
