"""Over Spark Connect: a real ``SparkConnectServer`` (local[2], loopback) started from the installed pyspark,
the commands run against it with ``--remote``, and their outputs compared row for row with the classic
session's on the same real photos and bad files.

The Connect client runs in a child process: a Connect session switches pyspark into Connect mode for
the whole process (``SPARK_CONNECT_MODE_ENABLED``), which the tests' classic session must not see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_main
from transfer_cases import reference_predictions

import sparkvision

SOURCE = str(Path(sparkvision.__file__).resolve().parents[1])


@pytest.fixture(scope="session")
def connect_url(tmp_path_factory):
    from sparkvision.testing.connect import ConnectServer

    with ConnectServer(tmp_path_factory.mktemp("connect-server"), cores=2) as server:
        yield server.url


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SOURCE, env.get("PYTHONPATH")) if p)
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    return env


def connect_cli(url: str, *args: object) -> dict:
    """``sparkvision ARGS --remote URL --json`` in a child process; its printed JSON."""
    done = subprocess.run([sys.executable, "-m", "sparkvision.cli.main", *map(str, args), "--remote", url, "--json"],
                          capture_output=True, text=True, env=_child_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def connect_python(url: str, script: str) -> dict:
    """A Python script in a child process with ``spark``, a Connect session of ``url``; the JSON it prints last."""
    prelude = ("from sparkvision.config import SparkSettings\nfrom sparkvision.session import get_spark\n"
               f"spark = get_spark(SparkSettings(remote={url!r}))\n")
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], capture_output=True, text=True,
                          env=_child_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reference(fitted_imagenette, imagenette) -> dict:
    return reference_predictions(fitted_imagenette["model_dir"], imagenette)


def _table(path: str | Path, *keys: str) -> pd.DataFrame:
    """A Parquet output, its rows ordered by ``keys`` (default: path)."""
    return pd.read_parquet(path).sort_values(list(keys or ("path",))).reset_index(drop=True)


def _assert_same_rows(got: pd.DataFrame, want: pd.DataFrame, approx: tuple[str, ...] = (), atol: float = 0.0,
                      skip: tuple[str, ...] = ()) -> None:
    """Every column of every row equal (``approx``: within ``atol``), but when each run happened (``*_at``)
    and the ``skip`` columns."""
    assert list(got.columns) == list(want.columns)
    assert got["path"].tolist() == want["path"].tolist()  # every input row, once
    for column in got.columns:
        if column.endswith("_at") or column in skip:
            continue
        for path, a, b in zip(got["path"], got[column], want[column], strict=True):
            if column in approx and a is not None and b is not None:
                np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=atol,
                                           err_msg=f"{column} of {path}")
            elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                assert a is not None and b is not None and np.array_equal(a, b), (column, path)
            else:
                assert a == b or (pd.isna(a) and pd.isna(b)), (column, path, a, b)


def test_ingest_over_connect_matches_classic(spark, connect_url, reference, tmp_path):
    code, _ = run_main("ingest", reference["photos"], "--out", tmp_path / "classic")
    assert code == 0
    printed = connect_cli(connect_url, "ingest", reference["photos"], "--out", tmp_path / "connect")
    assert (printed["rows"], printed["ok"]) == (23, 20)
    assert set(printed["error_kinds"]) == {"empty_file", "not_an_image", "truncated"}
    _assert_same_rows(_table(tmp_path / "connect"), _table(tmp_path / "classic"))


def test_predict_over_connect_matches_classic(connect_url, fitted_imagenette, reference, tmp_path):
    printed = connect_cli(connect_url, "predict", "--model", fitted_imagenette["model_dir"],
                          "--input", reference["photos"], "--out", tmp_path / "predictions")
    assert (printed["rows"], printed["predicted"], printed["errors"]) == (23, 20, 3)
    # The same ONNX graph on the same bytes: the very same numbers.
    _assert_same_rows(_table(tmp_path / "predictions"), _table(reference["predictions"]))


def test_fit_over_connect_matches_classic(connect_url, fitted_imagenette, imagenette, reference, tmp_path):
    """The same fit over Connect: the same features, the same cross-validated choice, and the same head
    (solved on the driver on both; over Connect handed to MLlib as a fit pinned by bounds)."""
    printed = connect_cli(connect_url, "fit", "--train", imagenette / "train", "--per-class", 10,
                          "--out", tmp_path / "model")
    assert printed["labels"] == fitted_imagenette["labels"]
    assert printed["classifier_params"] == fitted_imagenette["classifier_params"]
    assert printed["model_selection"] == fitted_imagenette["model_selection"]
    connect_cli(connect_url, "predict", "--model", tmp_path / "model", "--input", reference["photos"],
                "--out", tmp_path / "predictions")
    _assert_same_rows(_table(tmp_path / "predictions"), _table(reference["predictions"]),
                      approx=("probability",), atol=1e-9, skip=("model_version",))  # another model directory


def test_evaluate_over_connect_matches_classic(spark, connect_url, fitted_imagenette, reference, tmp_path):
    code, out = run_main("evaluate", "--predictions", reference["predictions"], "--model",
                         fitted_imagenette["model_dir"], "--out", tmp_path / "classic")
    assert code == 0
    printed = connect_cli(connect_url, "evaluate", "--predictions", reference["predictions"], "--model",
                          fitted_imagenette["model_dir"], "--out", tmp_path / "connect")
    classic = json.loads(out)
    for result in (printed, classic):
        result.get("source", {}).pop("report_dir", None)
    assert _rounded(printed) == _rounded(classic)
    assert printed["rows"] == 23 and printed["error_rows"] == 3
    metrics = [json.loads((tmp_path / side / "metrics.json").read_text()) for side in ("classic", "connect")]
    for result in metrics:
        result["source"].pop("report_dir")
    assert _rounded(metrics[0]) == _rounded(metrics[1])


def _rounded(value):
    """``value`` with every float to 12 significant digits (sums over partitions may differ in the last bits)."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def test_python_api_over_connect(spark, connect_url, fitted_imagenette, reference):
    """The Spark ML stage, the SQL functions and storage, from Python over Connect."""
    from pyspark.ml.functions import vector_to_array

    from sparkvision.io import load_images
    from sparkvision.ml import ImageFeaturizer

    got = connect_python(connect_url, f"""
        import json
        from pyspark.ml.functions import vector_to_array
        from sparkvision import storage
        from sparkvision.io import load_images
        from sparkvision.ml import ImageFeaturizer
        from sparkvision.sql import register

        photos = load_images(spark, {reference['photos']!r}, probe="header")
        featurizer = ImageFeaturizer(modelName="efficientnet_lite0")
        features = {{r["path"]: r["v"] for r in featurizer.transform(photos.where("error IS NULL"))
                    .select("path", vector_to_array("features").alias("v")).collect()}}
        register(spark, {str(fitted_imagenette['model_dir'])!r}, name="imagenette")
        photos.createOrReplaceTempView("photos")
        sql = {{r["path"]: [r["prediction"], r["error"]] for r in
               spark.sql("SELECT path, p.prediction, p.error FROM (SELECT path, imagenette(content) AS p FROM photos)")
               .collect()}}
        try:
            storage.list_dir("hdfs://namenode:8020/data", spark)
            refused = None
        except storage.NotLocalError as error:
            refused = str(error)
        print(json.dumps({{"features": features, "sql": sql, "refused": refused,
                          "rows_processed": featurizer.rows_processed}}))
    """)
    photos = load_images(spark, reference["photos"], probe="header")
    want = {r["path"]: r["v"] for r in ImageFeaturizer(modelName="efficientnet_lite0").transform(
        photos.where("error IS NULL")).select("path", vector_to_array("features").alias("v")).collect()}
    assert sorted(got["features"]) == sorted(want) and len(want) == 20
    for path, vector in want.items():
        np.testing.assert_allclose(got["features"][path], vector, rtol=0, atol=1e-6)
    rows = reference["rows"]
    assert sorted(got["sql"]) == sorted(rows)
    for path, (prediction, error) in got["sql"].items():
        assert prediction == rows[path]["prediction"] and (error is None) == (rows[path]["error"] is None), path
    assert got["refused"] is not None and "classic session" in got["refused"] and "\n" not in got["refused"]
    assert got["rows_processed"] == 0  # no accumulators over Connect


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, imagenette) -> Path:
    """Images to tile and detect: the tiny detector's two scenes at 3x and 1x, a real photo, and two bad files."""
    from detection_helpers import scene_png

    folder = tmp_path_factory.mktemp("scenes")
    (folder / "wide.png").write_bytes(scene_png(0, 3))
    (folder / "tall.png").write_bytes(scene_png(1))
    (folder / "photo.jpg").write_bytes(sorted((imagenette / "val").rglob("*.JPEG"))[0].read_bytes())
    (folder / "cut.png").write_bytes(scene_png(0)[:300])
    (folder / "empty.png").write_bytes(b"")
    return folder


def _assert_same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """The same columns and rows; nested values (boxes) compared through their JSON; not when or how long."""
    assert list(got.columns) == list(want.columns) and len(got) == len(want)
    for column in got.columns:
        if column.endswith(("_at", "_seconds")):
            continue
        assert [_json(v) for v in got[column]] == [_json(v) for v in want[column]], column


def _json(value) -> str:
    return json.dumps(value, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x))


def test_detect_over_connect_matches_classic(connect_url, scenes, tmp_path):
    from detection_helpers import detector_model_dir

    model = detector_model_dir()
    args = ["detect", "--model", model, "--input", scenes, "--score-threshold", "0.05"]
    code, out = run_main(*args, "--out", tmp_path / "classic")
    assert code == 0
    printed = connect_cli(connect_url, *args, "--out", tmp_path / "connect")
    classic = json.loads(out)
    assert printed["rows"] == classic["rows"] == 5
    got, want = (_table(tmp_path / side, "path") for side in ("connect", "classic"))
    assert sorted(p.rsplit("/", 1)[-1] for p in got.loc[got["error"].notna(), "path"]) == ["cut.png", "empty.png"]
    assert sum(len(b) for b in want["boxes"].dropna()) >= 4  # the scenes' rectangles are found
    _assert_same_table(got, want)


def test_tile_and_tile_detect_over_connect_match_classic(connect_url, scenes, tmp_path):
    """Tiling (the tile dataset itself) and detection on tiles, merged per image, row for row."""
    from detection_helpers import detector_model_dir

    tiles = ["tile", scenes, "--size", 96, "--overlap", 0.25]
    code, _ = run_main(*tiles, "--out", tmp_path / "classic-tiles")
    assert code == 0
    connect_cli(connect_url, *tiles, "--out", tmp_path / "connect-tiles")
    keys = ("source", "page", "level", "y", "x")
    got, want = (_table(tmp_path / f"{side}-tiles", *keys) for side in ("connect", "classic"))
    assert len(want) > 20 and want["error"].notna().sum() == 2  # one error row per unreadable source
    _assert_same_table(got, want)

    detect = [*tiles, "--model", detector_model_dir(), "--score-threshold", "0.05"]
    code, out = run_main(*detect, "--out", tmp_path / "classic-boxes")
    assert code == 0
    printed = connect_cli(connect_url, *detect, "--out", tmp_path / "connect-boxes")
    classic = json.loads(out)
    assert (printed["images"], printed["tiles"], printed["boxes"]) == (classic["images"], classic["tiles"],
                                                                       classic["boxes"])
    got, want = (_table(tmp_path / f"{side}-boxes", "source") for side in ("connect", "classic"))
    _assert_same_table(got, want)


def test_heatmap_over_connect_matches_classic(connect_url, scenes, fitted_imagenette, tmp_path):
    """A classifier on tiles put back on each image: labels, boxes and heat maps as in a classic session."""
    args = ["heatmap", scenes, "--model", fitted_imagenette["model_dir"], "--size", 224, "--overlap", 0.5,
            "--threshold", 0.3]
    code, out = run_main(*args, "--out", tmp_path / "classic")
    assert code == 0
    printed = connect_cli(connect_url, *args, "--out", tmp_path / "connect")
    classic = json.loads(out)
    assert printed["images"] == classic["images"] == 5 and printed["scored"] == classic["scored"] > 0
    got, want = (_table(tmp_path / side / "images", "path") for side in ("connect", "classic"))
    _assert_same_table(got.drop(columns=["probability"]), want.drop(columns=["probability"]))
    for a, b in zip(got["probability"], want["probability"], strict=True):
        assert (a is None) == (b is None) and (a is None or np.allclose(a, b, atol=1e-6))
    assert (sorted(p.name for p in (tmp_path / "connect" / "heatmaps").iterdir())
            == sorted(p.name for p in (tmp_path / "classic" / "heatmaps").iterdir()))
    heat = {side: {p.name: np.load(p)["heat"] for p in (tmp_path / side / "heatmaps").glob("*.npz")}
            for side in ("connect", "classic")}
    assert len(heat["classic"]) == 3 and heat["connect"].keys() == heat["classic"].keys()  # one per readable image
    for name, grid_ in heat["classic"].items():
        np.testing.assert_allclose(heat["connect"][name], grid_, atol=1e-6)


def test_size_strings_parse_as_spark_parses_them(spark):
    """Sizes are read without a JVM (there is none over Connect), as Spark's own JavaUtils reads them."""
    from sparkvision.io.sources import byte_string_bytes

    java = spark.sparkContext._jvm.org.apache.spark.network.util.JavaUtils
    for text in ("134217728", "64m", "64M", "1g", "512k", "3kb", "2GB", "1t", " 7b ", "0"):
        assert byte_string_bytes(text) == java.byteStringAsBytes(text), text
    for text in ("1.5g", "12x", "", "m"):
        with pytest.raises(ValueError):
            byte_string_bytes(text)
        with pytest.raises(Exception):  # noqa: B017 - py4j wraps Java's NumberFormatException
            java.byteStringAsBytes(text)
