"""--master, $SPARKVISION_MASTER and --conf reach the SparkSession builder (no second context started)."""

from __future__ import annotations

import pytest

from sparkvision.cli.common import settings_from_args
from sparkvision.cli.main import build_parser
from sparkvision.config import SparkSettings
from sparkvision.session import build_conf, parse_conf_pairs


def test_conf_pairs_parse_and_reject_malformed_entries():
    assert parse_conf_pairs(["spark.a=1", " spark.b = x=y ", "spark.c="]) == {
        "spark.a": "1", "spark.b": "x=y", "spark.c": ""}
    assert parse_conf_pairs(None) == {}
    for bad in ("spark.a", "=value", " =x"):
        with pytest.raises(ValueError, match="key=value"):
            parse_conf_pairs([bad])


def test_command_line_reaches_the_settings_and_the_builder_conf():
    args = build_parser().parse_args([
        "info", "some/folder", "--master", "spark://head:7077", "--driver-memory", "6g",
        "--conf", "spark.executor.memory=12g", "--conf", "spark.sql.shuffle.partitions=64",
    ])
    settings = settings_from_args(args)
    assert settings.master == "spark://head:7077" and settings.driver_memory == "6g"
    conf = build_conf(settings)
    assert conf["spark.executor.memory"] == "12g"  # the user's value wins over the default
    assert conf["spark.sql.shuffle.partitions"] == "64"
    assert conf["spark.driver.memory"] == "6g"
    assert conf["spark.sql.execution.arrow.pyspark.enabled"] == "true"


def test_environment_master_is_the_default_and_the_flag_wins(monkeypatch):
    monkeypatch.setenv("SPARKVISION_MASTER", "spark://from-env:7077")
    assert SparkSettings().master == "spark://from-env:7077"
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["ingest", "x", "--out", "y"])).master == "spark://from-env:7077"
    flag = parser.parse_args(["ingest", "x", "--out", "y", "--master", "local[3]"])
    assert settings_from_args(flag).master == "local[3]"
    monkeypatch.delenv("SPARKVISION_MASTER")
    assert SparkSettings().master == "local[*]"


def test_builder_conf_for_local_and_cluster_masters():
    local = build_conf(SparkSettings(master="local[2]"))
    cluster = build_conf(SparkSettings(master="spark://head:7077"))
    assert "spark.sql.shuffle.partitions" in local and "spark.sql.shuffle.partitions" not in cluster
    for conf in (local, cluster):
        assert "python" in conf["spark.pyspark.python"]  # workers use the driver's interpreter (the venv)
        assert "-Dsun.jnu.encoding=UTF-8" in conf["spark.executor.extraJavaOptions"]
        assert int(conf["spark.sql.execution.arrow.maxRecordsPerBatch"]) > 0
    with_extra = build_conf(SparkSettings().with_conf(**{"spark.ui.enabled": "true"}))
    assert with_extra["spark.ui.enabled"] == "true"


def test_every_spark_command_accepts_master_and_conf():
    parser = build_parser()
    for command in (["ingest", "x", "--out", "y"], ["info", "x"]):
        args = parser.parse_args([*command, "--master", "local[1]", "--conf", "a=b"])
        assert args.master == "local[1]" and args.conf == ["a=b"]
