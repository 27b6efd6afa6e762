"""The real ``sparkvision fit``, ``predict``, ``evaluate`` and ``classify`` commands.

``fit`` runs in its own process, as a user runs it; the commands after it run in this process
(``cli``), on the test session's Spark: the same code path without starting another JVM each.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from transfer_cases import IMAGENET_NAMES, bad_files, photo_folder, run_cli

from sparkvision.inference.predict import PREDICTIONS_MARKER
from sparkvision.io.builtin import find_demo_data
from sparkvision.io.dataset import MARKER as DATASET_MARKER
from sparkvision.models.model_dir import load_card

CLASSES = ["church", "parachute", "tench"]


def test_fit_then_predict_end_to_end(imagenette, tmp_path, cli, caplog):
    train = photo_folder(imagenette, "train", tmp_path / "train", CLASSES, per_class=10)
    model = tmp_path / "model"
    fitted = run_cli("fit", "--train", str(train), "--out", str(model), "--val-fraction", "0.2")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    report = json.loads(fitted.stdout)
    validation = report["validation"]
    # No --val: a stratified 20% of each class (2 of 10) was held out.
    assert validation["rows"] == 6 and validation["error_rows"] == 0
    assert set(validation["per_class"]) == set(CLASSES)
    assert {"precision", "recall", "f1", "support"} <= set(validation["per_class"]["tench"])
    assert validation["accuracy"] >= 5 / 6
    card = load_card(model)
    assert card.kind == "spark_pipeline" and card.labels == CLASSES == report["labels"]
    assert card.provenance["train_source"] == str(train) and "stratified" in card.provenance["val_source"]
    assert card.metrics["accuracy"] == validation["accuracy"]

    photos = photo_folder(imagenette, "val", tmp_path / "new", CLASSES, per_class=1)
    kinds = bad_files(photos, "tench")
    out = tmp_path / "predictions"
    code, printed = cli("predict", "--model", model, "--input", photos, "--out", out)
    assert code == 0, caplog.text[-3000:]
    summary = json.loads(printed)
    assert summary["rows"] == 6 and summary["errors"] == 3 and summary["predicted"] == 3
    table = pq.read_table(out).to_pylist()
    assert len(table) == 6 and len({r["path"] for r in table}) == 6
    assert sorted(r["error"].split(":")[0] for r in table if r["error"]) == sorted(kinds.values())
    assert all(r["prediction"] in CLASSES and len(r["probability"]) == 3 for r in table if not r["error"])
    # The probability order travels with the predictions: evaluate needs no --model for it.
    assert json.loads((out / PREDICTIONS_MARKER).read_text())["labels"] == CLASSES
    assert not (out / DATASET_MARKER).exists()  # a predictions directory is not taken for an image dataset
    code, printed = cli("evaluate", "--predictions", out, "--out", tmp_path / "report")
    assert code == 0, caplog.text[-3000:]
    metrics = json.loads(printed)
    assert metrics["source"]["labels_from"].endswith(PREDICTIONS_MARKER) and metrics["error_rows"] == 3
    assert metrics["top_k"] and metrics["log_loss"] is not None

    caplog.clear()
    code, printed = cli("predict", "--model", model, "--input", photos, "--out", out)
    assert code == 1 and printed == "" and "already exists" in caplog.text
    assert len(pq.read_table(out)) == 6


def test_classify_prints_imagenet_top_k(imagenette, tmp_path, cli, caplog):
    photos = photo_folder(imagenette, "val", tmp_path / "photos", ["golf_ball", "tench"], per_class=1)
    code, printed = cli("classify", "--input", photos, "--top-k", "3")
    assert code == 0, caplog.text[-3000:]
    rows = json.loads(printed)
    assert len(rows) == 2
    for row in rows:
        folder = row["path"].split("/")[-2]
        assert row["error"] is None and len(row["top_k"]) == 3
        assert row["top_k"][0]["label"] == IMAGENET_NAMES[folder]

    # With the mirror images averaged in, the same classes, with other probabilities.
    code, printed = cli("classify", "--input", photos, "--top-k", "3", "--tta", "flip")
    assert code == 0, caplog.text[-3000:]
    flipped = json.loads(printed)
    assert [r["top_k"][0]["label"] for r in flipped] == [r["top_k"][0]["label"] for r in rows]
    assert any(abs(a["top_k"][0]["probability"] - b["top_k"][0]["probability"]) > 1e-4
               for a, b in zip(rows, flipped, strict=True))


def test_demo_finds_the_shared_photos_next_to_the_repository(imagenette, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # found from the package's location, not the working directory
    monkeypatch.delenv("SPARKVISION_SHARED_DATA", raising=False)
    assert find_demo_data().resolve() == imagenette.resolve()
