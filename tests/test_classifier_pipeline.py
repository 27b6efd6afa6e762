"""The transfer-learning pipeline: accuracy on real photos, persistence across processes, grid search
on cached features, every MLlib classifier, bad rows."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from pyspark.sql import functions as F
from transfer_cases import ROOT, bad_files, photo_folder

from sparkvision.config import TransferSettings
from sparkvision.deploy.export import NotExportableError, ensure_onnx
from sparkvision.inference.predict import load_model
from sparkvision.io import load_images
from sparkvision.ml.classifier import fit_transfer
from sparkvision.models.model_dir import load_card
from sparkvision.models.runner import ClassifierRunner

SMALL_CLASSES = ["church", "golf_ball", "tench"]


@pytest.fixture(scope="module")
def imagenette_model(spark, imagenette, tmp_path_factory):
    """The default pipeline fitted on all of imagenette-mini/train, validated on all of val."""
    train = load_images(spark, str(imagenette / "train"), probe="header")
    val = load_images(spark, str(imagenette / "val"), probe="header")
    model = fit_transfer(train, val, TransferSettings(), provenance={"train_source": "imagenette-mini/train"})
    out = model.save(str(tmp_path_factory.mktemp("models") / "imagenette"))
    return model, out


@pytest.fixture(scope="module")
def small_data(spark, imagenette, tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    train = photo_folder(imagenette, "train", root / "train", SMALL_CLASSES, per_class=12)
    val = photo_folder(imagenette, "val", root / "val", SMALL_CLASSES, per_class=4)
    return (load_images(spark, str(train), probe="header"), load_images(spark, str(val), probe="header"), root)


def test_default_pipeline_reaches_97_percent_on_imagenette_val_and_runs_the_cnn_once_per_image(imagenette_model):
    model, out = imagenette_model
    metrics = model.metrics
    assert metrics["rows"] == 400 and metrics["error_rows"] == 0
    assert metrics["accuracy"] >= 0.97, metrics["accuracy"]
    assert {c["label"] for c in metrics["per_class"]} == set(model.labels) and len(model.labels) == 10
    # 800 training + 400 validation images, each through the CNN exactly once although
    # LogisticRegression iterates over the training features many times.
    assert model.featurizer.rows_processed == 1200

    card = load_card(out)
    assert card.kind == "spark_pipeline" and card.labels == sorted(card.labels) == model.labels
    assert card.onnx == "model.onnx" and (out / "model.onnx").is_file()  # servable without Spark as saved
    assert card.preprocess.size == (224, 224) and card.provenance["classifier"] == "logreg"
    assert card.provenance["train_rows"] == {name: 80 for name in model.labels}
    # regParam and standardization chosen by 3-fold CV on the cached vectors, recorded in the card
    # and given to the MLlib model; the chosen regParam is inside the values tried.
    chosen = card.provenance["model_selection"]
    assert chosen["method"].startswith("3-fold") and isinstance(chosen["standardization"], bool)
    assert model.classifier_params["regParam"] == chosen["regParam"]
    assert model.classifier_params["standardization"] == chosen["standardization"]
    tried = sorted({g["params"]["regParam"] for g in card.provenance["grid"]})
    assert tried[0] < chosen["regParam"] < tried[-1]
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]


def test_saved_model_reloaded_in_a_new_process_gives_identical_predictions(spark, imagenette_model, imagenette,
                                                                          tmp_path):
    model, out = imagenette_model
    subset = photo_folder(imagenette, "val", tmp_path / "val", model.labels, per_class=4)
    here = {r["path"]: r for r in load_model(out).predictions(load_images(spark, str(subset))).collect()}
    # The same in-memory model (not reloaded) agrees with the loaded one.
    fitted = {r["path"]: r["prediction"] for r in model.transform(load_images(spark, str(subset))).collect()}
    assert fitted == {p: r["prediction"] for p, r in here.items()}

    result_file = tmp_path / "other.json"
    script = textwrap.dedent(f"""
        import json
        from sparkvision.config import SparkSettings
        from sparkvision.session import get_spark
        from sparkvision.io import load_images
        from sparkvision.inference.predict import load_model
        spark = get_spark(SparkSettings(master="local[2]", driver_memory="1g"))
        rows = load_model({str(out)!r}).predictions(load_images(spark, {str(subset)!r})).collect()
        json.dump({{r["path"]: [r["prediction"], r["probability"]] for r in rows}}, open({str(result_file)!r}, "w"))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    there = json.loads(result_file.read_text())
    assert set(there) == set(here) and len(here) == 40
    for path, (prediction, probability) in there.items():
        assert prediction == here[path]["prediction"]
        np.testing.assert_allclose(probability, here[path]["probability"], rtol=0, atol=1e-12)


def test_grid_search_uses_cached_features_and_never_reruns_the_cnn(small_data):
    train, val, _ = small_data
    settings = replace(TransferSettings(), grid=True, grid_folds=2, logreg_grid_reg=(0.001, 0.1, 1.0),
                       logreg_max_iter=30)
    model = fit_transfer(train, val, settings)
    # regParam x standardization candidates x 2 folds + the final MLlib fit, yet each of the
    # 36 training and 12 validation images went through the CNN once.
    assert model.featurizer.rows_processed == 36 + 12
    tried = {(g["params"]["regParam"], g["params"]["standardization"]) for g in model.grid_results}
    assert {(r, s) for r in (0.001, 0.1, 1.0) for s in (True, False)} <= tried
    best = max(model.grid_results, key=lambda g: (g["cv_accuracy"], g["params"]["regParam"], -g["cv_log_loss"]))
    assert model.classifier_params["regParam"] == best["params"]["regParam"]
    assert model.classifier_params["standardization"] == best["params"]["standardization"]
    assert model.metrics["accuracy"] >= 0.9


@pytest.mark.parametrize("name", ["rf", "gbt", "mlp"])
def test_every_classifier_fits_saves_loads_and_gives_probabilities_in_label_order(spark, small_data, tmp_path, name):
    train, val, root = small_data
    # Small settings: this checks the plumbing of each classifier (fit, persistence, the
    # probability contract); the README reports their accuracy at full size.
    settings = replace(TransferSettings(), classifier=name, rf_num_trees=20, gbt_max_iter=2, gbt_max_depth=2,
                       mlp_hidden=(32,), mlp_max_iter=100)
    model = fit_transfer(train, val, settings)
    assert model.metrics["accuracy"] >= {"rf": 0.75, "gbt": 0.5, "mlp": 0.75}[name], (name, model.metrics)
    out = model.save(str(tmp_path / name))
    loaded = load_model(out)
    rows = loaded.predictions(val).collect()
    assert len(rows) == 12 and loaded.labels == SMALL_CLASSES
    for row in rows:
        probs = np.asarray(row["probability"])
        assert probs.shape == (3,) and abs(probs.sum() - 1) < 1e-9
        assert row["prediction"] == SMALL_CLASSES[int(probs.argmax())]
    if name == "mlp":  # saved with its ONNX graph, which gives Spark's probabilities
        runner = ClassifierRunner.from_model_dir(out, threads=1)
        images = {r["path"]: bytes(r["content"]) for r in val.select("path", "content").collect()}
        onnx = runner.predict_proba(list(images.values()))
        assert onnx.errors == [None] * 12
        want = {r["path"]: r["probability"] for r in rows}
        np.testing.assert_allclose(onnx.values, [want[p] for p in images], atol=1e-4)
    else:  # tree ensembles have no ONNX form: the card says why, and serve/optimize say it without Spark
        assert load_card(out).onnx is None and not (out / "model.onnx").exists()
        with pytest.raises(NotExportableError, match="tree ensembles cannot|OneVsRestModel"):
            ensure_onnx(out)


def test_bad_images_get_errors_and_null_predictions_and_are_never_dropped(spark, small_data, tmp_path):
    train, _, root = small_data
    model = fit_transfer(train, None, TransferSettings())
    folder = tmp_path / "mixed"
    kinds = bad_files(folder, "tench")
    for link in sorted((root / "val" / "tench").iterdir())[:2]:
        (folder / "tench" / link.name).symlink_to(link.resolve())
    frame = load_images(spark, str(folder), probe="header")
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in model.transform(frame).select(
        "path", "prediction", "probability", "error").collect()}
    assert len(rows) == 5 == frame.count()
    for name, kind in kinds.items():
        assert rows[name]["error"].split(":")[0] == kind
        assert rows[name]["prediction"] is None and rows[name]["probability"] is None
    good = [r for n, r in rows.items() if n not in kinds]
    assert all(r["error"] is None and r["prediction"] in SMALL_CLASSES for r in good)
    assert model.transform(frame).where(F.col("prediction").isNull()).count() == len(kinds)
