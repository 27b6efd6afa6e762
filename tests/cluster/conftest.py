"""A real Spark standalone cluster (master + 2 one-core workers on loopback) for the cluster tests.

These tests need their own pytest process: a process holds one SparkSession, and
the suite's embedded ``spark`` fixture would otherwise be reused against the cluster
(or the other way round). ``scripts/test.sh`` runs ``pytest tests/cluster`` separately;
a run that collects both is told so, and the cluster tests are left out of it.

The driver runs in this process (``cluster_spark``), so a test can watch a job's
tasks through the status tracker and kill a worker while they run; the embedded
reference runs are real ``sparkvision`` commands with ``--master local[2]`` in a
subprocess, as a user would run them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_support import run_cli_inprocess, wait_cluster_idle, wait_for_executors

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(session, config, items):
    inside = [i for i in items if HERE in Path(str(i.path)).parents]
    if inside and len(inside) < len(items):
        for item in inside:
            items.remove(item)
        config.hook.pytest_deselected(items=inside)
        message = (f"{len(inside)} cluster tests left out: they need their own process; "
                   "run `pytest tests/cluster` (./scripts/test.sh does)")
        config.issue_config_time_warning(pytest.PytestWarning(message), stacklevel=2)
        return
    # Tests that run whole applications as subprocesses need the cluster's cores, which this
    # process's application holds while it lives: they run last, after it has been stopped.
    items.sort(key=lambda item: "cluster_released" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    from sparkvision.config import ClusterSettings
    from sparkvision.testing.cluster import StandaloneCluster

    logs = tmp_path_factory.mktemp("cluster-logs")
    cluster = StandaloneCluster(logs, ClusterSettings(workers=2, cores_per_worker=1, worker_memory="2g"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def cluster_spark(cluster):
    """The driver, in this process, against the cluster; one executor per worker."""
    from sparkvision.config import SparkSettings
    from sparkvision.session import get_spark

    settings = SparkSettings(
        master=cluster.master_url, app_name="sparkvision-cluster-tests", driver_memory="2g",
        executor_memory="1g",
    )
    spark = get_spark(settings)
    assert spark.sparkContext.master == cluster.master_url, "another SparkSession was already active"
    wait_for_executors(spark, cluster.settings.workers)
    yield spark
    spark.stop()


@pytest.fixture(scope="session")
def cluster_released(cluster):
    """The cluster with every core free: this process's application (if any) stopped."""
    from pyspark import SparkContext

    if SparkContext._active_spark_context is not None:
        SparkContext._active_spark_context.stop()
    wait_cluster_idle(cluster)
    return cluster


@pytest.fixture(scope="session")
def model_dir(cluster, cluster_spark, imagenette, tmp_path_factory):
    """A transfer-learning model fitted on the cluster (10 photos per class), then held fixed."""
    out = tmp_path_factory.mktemp("cluster-model") / "imagenette"
    rc = run_cli_inprocess([
        "fit", "--train", str(imagenette / "train"), "--per-class", "10", "--val", str(imagenette / "val"),
        "--val-per-class", "4", "--out", str(out), "--master", cluster.master_url,
    ])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def predictions(cluster, cluster_spark, model_dir, imagenette, tmp_path_factory):
    """That model's predictions of imagenette-mini/val, computed on the cluster without faults."""
    out = str(tmp_path_factory.mktemp("cluster-predictions") / "val")
    rc = run_cli_inprocess(["predict", "--model", str(model_dir), "--input", str(imagenette / "val"),
                            "--out", out, "--master", cluster.master_url])
    assert rc == 0
    return out
