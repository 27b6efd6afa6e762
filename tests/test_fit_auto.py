"""``sparkvision fit --auto``: a head on every offline backbone, the best by validation saved and explained,
its cost stated before the work starts (real photos, real backbones, checked against scikit-learn)."""

from __future__ import annotations

import json
import logging
import math
import os

import pyarrow.parquet as pq
import pytest
from conftest import assert_usage_errors, run_main
from sklearn.metrics import accuracy_score
from transfer_cases import photo_folder

from sparkvision.models import get_spec, list_models
from sparkvision.models.model_dir import load_card

CLASSES = ["chain_saw", "golf_ball", "tench"]


def _offline_classifiers() -> set[str]:
    """Every registered pretrained classifier whose weights file is on this machine: what --auto must try."""
    return {n for n in list_models(pretrained=True)
            if get_spec(n).task == "classify" and os.path.isfile(get_spec(n).weights_path())}


def test_fit_auto_fits_every_offline_backbone_saves_the_best_by_val_and_states_its_cost_first(
        imagenette, tmp_path, cli, caplog):
    train = photo_folder(imagenette, "train", tmp_path / "train", CLASSES, per_class=8)
    val = photo_folder(imagenette, "val", tmp_path / "val", CLASSES, per_class=4)
    # one val photo cut short: its row gets an error and a null feature vector, every candidate goes on
    photo = sorted((imagenette / "val" / "tench").iterdir())[-1]
    (val / "tench" / "truncated.jpg").write_bytes(photo.read_bytes()[:600])
    model = tmp_path / "model"
    caplog.set_level(logging.INFO, logger="sparkvision")
    code, printed = cli("fit", "--auto", "--train", train, "--val", val, "--out", model)
    assert code == 0
    result = json.loads(printed)
    table = result["table"]

    # Every offline backbone, the EfficientNet-Lite family among them; no detector, no untrained network.
    offline = _offline_classifiers()
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= offline
    assert [r["candidate"] for r in table] == [r["backbone"] for r in table]
    assert sorted(r["backbone"] for r in table) == sorted(offline)
    code, models = run_main("models")
    gflops = {m["name"]: m["gflops"] for m in json.loads(models)}
    # A plain EfficientNet-Lite does not run: its features are sliced from its _stages variant's.
    sliced = {n: get_spec(n).contains_features_of for n in offline if get_spec(n).contains_features_of in offline}
    assert sliced == {f"efficientnet_lite{i}_stages": f"efficientnet_lite{i}" for i in range(3)}
    for row in table:
        assert row["kind"] == "frozen" and row["gflops"] == gflops[row["backbone"]]
        assert row["regParam"] > 0 and isinstance(row["standardization"], bool)
        assert 0 <= row["cv_accuracy"] <= 1 and 0 <= row["val_accuracy"] <= 1
        assert row["fit_seconds"] > 0
        owner = next((k for k, v in sliced.items() if v == row["backbone"]), None)
        assert row.get("features_from") == owner
        assert (row["featurize_seconds"] == 0) if owner else (row["featurize_seconds"] > 0)

    # The choice, recomputed from the table: best val accuracy, ties to fewer GFLOPs.
    best = min(table, key=lambda r: (-r["val_accuracy"], r["gflops"]))
    assert [r["chosen"] for r in table] == [r is best for r in table]
    assert result["backbone"] == best["backbone"] and result["selected_by"] == "val_accuracy"
    card = load_card(model)
    assert card.kind == "spark_pipeline" and card.provenance["backbone"] == best["backbone"]
    assert card.provenance["model_selection"]["regParam"] == best["regParam"]
    assert card.provenance["model_selection"]["auto"]["table"] == table

    # The cost: logged as one line before the first backbone's featurization, and in the result.
    messages = [r.getMessage() for r in caplog.records]
    cost_at = next(i for i, m in enumerate(messages) if m.startswith("fit --auto cost estimate"))
    started_at = next(i for i, m in enumerate(messages) if m.startswith("fit --auto: featurizing"))
    featurized_at = next(i for i, m in enumerate(messages) if m.startswith("featurized "))
    assert cost_at < started_at < featurized_at
    # three networks ran, each once (its train and val rows), for six candidates
    passes = [m for m in messages if m.startswith("fit --auto: featurizing")]
    assert len(passes) == 3 and all("_stages" in m for m in passes)
    assert "x 3 backbones that run" in messages[cost_at]
    cost = result["cost"]
    assert (cost["train_images"], cost["val_images"]) == (24, 13) and "measured on" in cost["method"]
    assert [b["backbone"] for b in cost["backbones"]] == [r["backbone"] for r in table]
    for b in cost["backbones"]:
        assert b.get("features_from") == next((k for k, v in sliced.items() if v == b["backbone"]), None)
        assert (b["per_image_seconds"] == 0) if b.get("features_from") else (b["per_image_seconds"] > 0)
        assert b["estimate_seconds"] == pytest.approx(37 * b["per_image_seconds"] / cost["parallel_tasks"], abs=0.01)
        assert b["backbone"] in messages[cost_at]
    assert cost["total_seconds"] == pytest.approx(sum(b["estimate_seconds"] for b in cost["backbones"]), abs=0.1)

    # The sliced features fit the head a plain fit of that backbone fits, to the same val accuracy.
    code, printed = cli("fit", "--backbone", "efficientnet_lite0", "--train", train, "--val", val,
                        "--out", tmp_path / "lite0")
    plain, row = json.loads(printed), next(r for r in table if r["backbone"] == "efficientnet_lite0")
    assert code == 0 and plain["model_selection"]["regParam"] == row["regParam"]
    assert plain["model_selection"]["standardization"] == row["standardization"]
    assert math.isclose(plain["validation"]["accuracy"], row["val_accuracy"], abs_tol=1e-9)

    # predict runs the saved model as any fit model, and gives the chosen row's val accuracy again.
    code, printed = cli("predict", "--model", model, "--input", val, "--out", tmp_path / "predictions")
    assert code == 0 and (json.loads(printed)["predicted"], json.loads(printed)["errors"]) == (12, 1)
    rows = [r for r in pq.read_table(tmp_path / "predictions").to_pylist() if r["error"] is None]
    assert len(rows) == 12
    accuracy = accuracy_score([r["label"] for r in rows], [r["prediction"] for r in rows])
    assert math.isclose(accuracy, best["val_accuracy"], abs_tol=1e-9) and accuracy >= 0.75

    # The evaluation report of that model shows the comparison.
    code, _ = cli("evaluate", "--predictions", tmp_path / "predictions", "--model", model, "--out", tmp_path / "report")
    assert code == 0
    page = (tmp_path / "report" / "report.html").read_text("utf-8")
    assert 'id="auto-table"' in page and all(r["backbone"] in page for r in table)


def test_fit_auto_misuse_is_a_usage_error_before_spark_starts(tmp_path, caplog):
    cases = [
        (["fit", "--train", tmp_path, "--out", tmp_path / "m", "--finetune"], "use it with --auto"),
        (["fit", "--auto", "--train", tmp_path, "--out", tmp_path / "m", "--backbone", "efficientnet_lite0,nope"],
         "unknown model 'nope'"),
    ]
    assert_usage_errors(caplog, cases)


def test_fit_auto_finetune_adds_a_trained_candidate_costed_first_and_scored_on_the_same_val_rows(
        spark, imagenette, tmp_path, caplog):
    """``--finetune``: the fine-tune preset trains on the same rows (through TorchDistributor) and is
    scored on the same val images as the frozen heads; its training step is measured for the cost line."""
    from sparkvision.config.training import apply_overrides, preset
    from sparkvision.inference.predict import load_model
    from sparkvision.ml.auto import choose, fit_auto

    train = photo_folder(imagenette, "train", tmp_path / "train", CLASSES, per_class=8)
    val = photo_folder(imagenette, "val", tmp_path / "val", CLASSES, per_class=4)
    # the preset, shortened to what a test can afford: one epoch at 64 px, the last stage and the head
    config = apply_overrides(preset("finetune"), {"epochs": 1, "batch_size": 8, "schedule": {"warmup_epochs": 0},
                                                  "model": {"image_size": (64, 64), "unfreeze_stages": 1}})
    caplog.set_level(logging.INFO, logger="sparkvision")
    result = fit_auto(spark, str(train), str(tmp_path / "model"), val_src=str(val),
                      backbones=["efficientnet_lite0"], finetune=config)

    frozen, tuned = result.table
    assert (frozen["kind"], tuned["kind"]) == ("frozen", "finetune")
    assert tuned["candidate"] == "efficientnet_lite0 fine-tuned" and tuned["fit_seconds"] > 0
    # Scored like the frozen head: the saved directory's predictions on the same 12 val photos; the
    # rank's own val top-1 on those rows (torch, the same last epoch) agrees to a photo at most.
    assert 0 <= tuned["val_accuracy"] <= 1
    assert abs(tuned["val_accuracy"] - tuned["train_val_top1"]) <= 1 / 12 + 1e-9
    # the cost came first, with the training step measured on this machine
    cost = result.cost["finetune"]
    assert (cost["epochs"], cost["train_images"], cost["arch"]) == (1, 24, "efficientnet_lite0")
    assert cost["per_image_seconds"] > 0 and cost["estimate_seconds"] == pytest.approx(24 * cost["per_image_seconds"],
                                                                                        abs=0.1)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.index(next(m for m in messages if m.startswith("fit --auto cost estimate"))) < \
        messages.index(next(m for m in messages if m.startswith("fit --auto: fine-tuning")))
    assert "export" in result.notes[0] and "last epoch of 1" in result.notes[0]

    # The saved model is the chosen row's, whichever kind won, and predicts the val photos again.
    assert result.chosen is choose(result.table, "val_accuracy") and result.chosen["chosen"]
    card = load_card(tmp_path / "model")
    assert card.kind == ("onnx" if result.chosen["kind"] == "finetune" else "spark_pipeline")
    assert card.provenance["model_selection"]["auto"]["table"] == result.table
    loaded = load_model(str(tmp_path / "model"))
    assert sorted(loaded.labels) == sorted(CLASSES)
