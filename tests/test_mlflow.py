"""MLflow: the ``sparkvision`` flavour and its pyfunc through a sqlite-backed registry, ``spark_udf``, and
``--mlflow`` runs of the commands, all checked against sparkvision's own outputs on real photos.

(``train --mlflow`` and its per-epoch metrics are tested on the real training run of test_training_ddp.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from transfer_cases import reference_predictions

from sparkvision.io.errors import error_kind

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def reference(fitted_imagenette, imagenette) -> dict:
    return reference_predictions(fitted_imagenette["model_dir"], imagenette)


@pytest.fixture(autouse=True)
def _mlflow_settings_restored():
    """MLflow's process-wide settings (and the MLFLOW_* variables it sets from them) as before each test:
    later tests, and the processes they start, must not log to these stores."""
    from sparkvision.mlflow.tracking import restored_settings

    with restored_settings():
        yield


@pytest.fixture(scope="module")
def registry(tmp_path_factory, fitted_imagenette) -> dict:
    """A local tracking store and registry (sqlite) holding the fitted model as version 1 of ``imagenette``."""
    import sparkvision.mlflow
    from sparkvision.mlflow.tracking import restored_settings

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with restored_settings():
        _use({"uri": uri})
        mlflow.set_experiment(experiment_id=mlflow.create_experiment("tests", (root / "mlruns").as_uri()))
        with mlflow.start_run() as run:
            info = sparkvision.mlflow.log_model(fitted_imagenette["model_dir"], name="model",
                                                registered_model_name="imagenette")
    return {"uri": uri, "run_id": run.info.run_id, "info": info, "root": root}


def _use(registry: dict) -> None:
    mlflow.set_tracking_uri(registry["uri"])
    mlflow.set_registry_uri(registry["uri"])


def _photo_paths(reference: dict) -> list[str]:
    return sorted(reference["rows"])


def _local(path: str) -> str:
    return path.removeprefix("file:")


def _assert_rows_match(paths: list[str], got: pd.DataFrame, reference: dict) -> None:
    """Each row the pyfunc gave is what ``sparkvision predict`` (the Spark pipeline) wrote for that file."""
    assert list(got.columns) == ["prediction", "probability", "error"] and len(got) == len(paths)
    for path, row in zip(paths, got.to_dict("records"), strict=True):
        want = reference["rows"][path]
        assert error_kind(row["error"]) == error_kind(want["error"]), (path, row["error"], want["error"])
        assert row["prediction"] == want["prediction"], path
        if want["probability"] is None:
            assert row["probability"] is None
        else:
            np.testing.assert_allclose(row["probability"], want["probability"], atol=1e-4)


def test_registered_model_version_loads_and_predicts_like_sparkvision(registry, reference, fitted_imagenette):
    import sparkvision.mlflow
    from sparkvision.models.model_dir import load_card, model_digest

    _use(registry)
    client = mlflow.MlflowClient(registry["uri"])
    version = client.get_model_version("imagenette", "1")
    assert version.run_id == registry["run_id"] and version.status == "READY"
    # The MLmodel file: the sparkvision flavour and the pyfunc, the model directory as data.
    model = mlflow.models.Model.load("models:/imagenette/1")
    assert model.flavors["python_function"]["loader_module"] == "sparkvision.mlflow"
    assert model.flavors["sparkvision"]["kind"] == "spark_pipeline"
    assert model.flavors["sparkvision"]["model_version"] == model_digest(fitted_imagenette["model_dir"])
    # sparkvision.mlflow.load_model gives back a model directory that predicts as the original does.
    model_dir = sparkvision.mlflow.load_model("models:/imagenette/1")
    assert load_card(model_dir).labels == load_card(fitted_imagenette["model_dir"]).labels
    assert model_digest(model_dir) == model_digest(fitted_imagenette["model_dir"])

    pyfunc = mlflow.pyfunc.load_model("models:/imagenette/1")
    paths = _photo_paths(reference)
    contents = pd.DataFrame({"content": [Path(_local(p)).read_bytes() for p in paths]})
    _assert_rows_match(paths, pyfunc.predict(contents), reference)
    # Paths instead of bytes, one that does not exist: its own error row, the others unchanged.
    got = pyfunc.predict(pd.DataFrame({"path": [_local(p) for p in paths] + ["/nonexistent/x.jpg"]}))
    _assert_rows_match(paths, got.iloc[:-1], reference)
    assert got.iloc[-1]["prediction"] is None and got.iloc[-1]["error"].startswith("unreadable: ")


def test_pyfunc_runs_without_spark(registry, reference):
    """In a process where pyspark cannot even be imported (a serving container), the pyfunc still predicts."""
    paths = [p for p in _photo_paths(reference) if reference["rows"][p]["error"] is None][:3]
    script = (
        "import sys, json; sys.modules['pyspark'] = None\n"
        "import mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({registry['uri']!r})\n"
        "model = mlflow.pyfunc.load_model('models:/imagenette/1')\n"
        f"out = model.predict(pd.DataFrame({{'path': {[_local(p) for p in paths]!r}}}))\n"
        "print(json.dumps(out.to_dict('records')))\n"
        "assert not any(name.startswith('pyspark') and sys.modules[name] for name in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_rows_match(paths, pd.DataFrame(json.loads(done.stdout.splitlines()[-1])), reference)


def test_spark_udf_on_image_bytes(spark, registry, reference):
    from pyspark.sql import functions as F

    from sparkvision.io import load_images

    _use(registry)
    predict = mlflow.pyfunc.spark_udf(spark, "models:/imagenette/1")  # result type from the model's signature
    frame = load_images(spark, reference["photos"], probe="header").select("path", "content")
    rows = frame.withColumn("p", predict(F.col("content"))).select("path", "p.*").orderBy("path").toPandas()
    # MLflow 3.17 casts a struct's string fields with astype(str) in every batch that is not all null, so a
    # null there arrives as "None"; the README shows the workaround, applied here.
    ok = [reference["rows"][p]["error"] is None for p in rows["path"]]
    assert set(rows["error"][ok]) <= {None, "None"} and set(rows["prediction"][[not o for o in ok]]) <= {None, "None"}
    rows["error"] = rows["error"].where(rows["error"] != "None", None)
    rows["prediction"] = rows["prediction"].where(rows["error"].isna(), None)
    _assert_rows_match(list(rows["path"]), rows[["prediction", "probability", "error"]], reference)


def test_evaluate_logs_its_report_to_a_run(cli, reference, fitted_imagenette, tmp_path):
    from sklearn.metrics import accuracy_score, confusion_matrix

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    report = tmp_path / "report"
    code, out = cli("evaluate", "--predictions", reference["predictions"], "--model", fitted_imagenette["model_dir"],
                    "--out", report, "--mlflow", uri, "--mlflow-experiment", "judging")
    assert code == 0
    result = json.loads(out)
    run_id = result["mlflow"]["run_id"]
    assert result["mlflow"]["tracking_uri"] == uri and result["mlflow"]["experiment"] == "judging"

    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sparkvision.command"] == "evaluate"
    assert client.get_experiment(run.info.experiment_id).name == "judging"
    assert run.info.artifact_uri.startswith((tmp_path / "mlruns").as_uri())  # beside the store, not in the cwd
    assert run.data.params["predictions"] == reference["predictions"]
    assert len(run.data.params["model.input_version"]) == 16
    # The metrics are the report's, and scikit-learn agrees with them on the predictions themselves.
    rows = [r for r in reference["rows"].values() if r["error"] is None]
    truth = pd.read_parquet(reference["predictions"]).set_index("path")["label"]
    labelled = [(truth[p], r["prediction"]) for p, r in reference["rows"].items() if r["error"] is None]
    y_true, y_pred = zip(*labelled, strict=True)
    assert run.data.metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert run.data.metrics["evaluated_rows"] == len(rows) == 20
    assert run.data.metrics["error_rows"] == 3
    assert run.data.metrics["per_class.tench.support"] == 2
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "metrics.json", "confusion_matrix.csv", "confusion_matrix.png"} <= artifacts
    local = Path(client.download_artifacts(run_id, "confusion_matrix.csv", str(tmp_path)))
    table = pd.read_csv(local, index_col=0)
    labels = list(table.columns)
    np.testing.assert_array_equal(table.to_numpy(), confusion_matrix(y_true, y_pred, labels=labels))
    assert Path(client.download_artifacts(run_id, "confusion_matrix.png", str(tmp_path))).read_bytes()[:4] == \
        b"\x89PNG"


def test_mlflow_switches_and_a_missing_install(monkeypatch, cli, caplog, reference, tmp_path):
    import argparse

    from sparkvision.mlflow.tracking import tracking_uri

    def args(command: str = "fit", **given) -> argparse.Namespace:
        return argparse.Namespace(command=command, **{"mlflow": None, "no_mlflow": False, "mlflow_register": None,
                                                      **given})

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(args()) is None
    assert tracking_uri(args(mlflow="")) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking_uri(args(mlflow="sqlite:///x.db")) == "sqlite:///x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking_uri(args()) == "sqlite:///env.db"  # the environment turns it on
    assert tracking_uri(args(no_mlflow=True)) is None
    assert tracking_uri(args("predict")) is None  # only the commands that take --mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    code, out = cli("evaluate", "--predictions", reference["predictions"], "--out", tmp_path / "r0", "--mlflow",
                    f"sqlite:///{tmp_path / 'a.db'}")
    assert code == 0 and "MLFLOW_TRACKING_URI" not in os.environ  # a run leaves no setting behind
    assert tracking_uri(args()) is None

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    code, out = cli("evaluate", "--predictions", reference["predictions"], "--out", tmp_path / "r", "--mlflow")
    assert code == 1 and out == ""
    assert "pip install 'sparkvision[mlflow]'" in caplog.text
    assert not (tmp_path / "r").exists()  # it stopped before any work
