"""The report for a real imagenette-mini model, opened in headless Chromium; ``compare``; thumbnails.

The model and predictions come from the real commands: ``sparkvision fit`` (EfficientNet-Lite0
features + MLlib logistic regression) on a few train images per class (``fitted_imagenette``, shared), then
``sparkvision predict`` on part of the val split, to which a file that is not an image
(an error row) and a photo outside any class folder (no true label) are added. Few
train images keep it quick and leave enough mistakes for the gallery.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_browser import assert_real_picture, offline_page

from sparkvision.cli.main import main
from sparkvision.evaluation.report import load_result
from sparkvision.evaluation.thumbnails import thumbnails
from sparkvision.models.model_dir import load_card
from sparkvision.training.engine import CURVE_COLUMNS

VAL_PER_CLASS = 16


def _run_cli(argv: list[str]) -> dict:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    assert code == 0, argv
    return json.loads(stdout.getvalue())


def _val_subset(imagenette: Path, root: Path) -> Path:
    """VAL_PER_CLASS real val photos per class (symlinks), one broken file, one photo without a class."""
    for folder in sorted((imagenette / "val").iterdir()):
        (root / folder.name).mkdir(parents=True)
        for photo in sorted(folder.iterdir())[:VAL_PER_CLASS]:
            (root / folder.name / photo.name).symlink_to(photo)
    (root / "tench" / "broken.jpg").write_bytes(b"this is not an image")
    (root / "unsorted.jpg").symlink_to(sorted((imagenette / "val" / "church").iterdir())[-1])
    return root


@pytest.fixture(scope="module")
def imagenette_model(spark, imagenette, fitted_imagenette, tmp_path_factory):
    """(predictions Parquet, model dir with curves.csv) of a real transfer-learned classifier."""
    work = tmp_path_factory.mktemp("imagenette-eval")
    model_dir = shutil.copytree(fitted_imagenette["model_dir"], work / "model")  # the shared model stays as fit left it
    val = _val_subset(imagenette, work / "val")
    predictions = str(work / "predictions")
    _run_cli(["predict", "--model", str(model_dir), "--input", str(val), "--out", predictions])
    rows = spark.read.parquet(predictions).toPandas()
    # Curves as the training engine writes them (its own column list), for the curves panel.
    epochs = np.arange(1, 6)
    pd.DataFrame({
        column: epochs if column == "epoch" else np.linspace(0.1, 1.0, len(epochs))[::-1 if "loss" in column else 1]
        for column in CURVE_COLUMNS
    }).to_csv(model_dir / "curves.csv", index=False)
    return {"predictions": predictions, "model_dir": str(model_dir), "work": work, "rows": rows,
            "labels": fitted_imagenette["labels"]}


@pytest.fixture(scope="module")
def report(imagenette_model, spark):
    out = imagenette_model["work"] / "report"
    printed = _run_cli(["evaluate", "--predictions", imagenette_model["predictions"], "--out", str(out),
                        "--model", imagenette_model["model_dir"], "--top-k", "3", "--gallery", "8"])
    return {"dir": out, "printed": printed}


def test_evaluate_prints_and_writes_the_metrics(report, imagenette_model):
    rows = imagenette_model["rows"]
    printed = report["printed"]
    assert printed == json.loads((report["dir"] / "metrics.json").read_text())
    assert printed["rows"] == len(rows) == 10 * VAL_PER_CLASS + 2
    assert printed["error_rows"] == 1 and list(printed["error_kinds"]) == ["not_an_image"]
    assert printed["unlabeled_rows"] == 1 and printed["evaluated_rows"] == 10 * VAL_PER_CLASS
    scored = rows[rows["error"].isna() & rows["label"].notna()]
    assert printed["accuracy"] == pytest.approx((scored["label"] == scored["prediction"]).mean())
    assert printed["model_labels"] == imagenette_model["labels"]
    assert set(printed["top_k"]) == {"1", "3"} and printed["log_loss"] > 0
    assert 0.5 < printed["accuracy"] < 1.0  # a real model that makes a few mistakes
    assert printed["source"]["model"] == load_card(imagenette_model["model_dir"]).name
    assert printed["argmax_mismatch_rows"] == 0  # predict writes probabilities in the card's label order


def test_report_opens_in_chromium_with_heat_map_and_gallery(report, imagenette_model):
    with offline_page(report["dir"] / "report.html") as page:
        heat = page.locator("#confusion-img")
        heat.scroll_into_view_if_needed()
        assert heat.is_visible()
        assert heat.evaluate("img => img.complete && img.naturalWidth") > 200
        thumbs = page.locator("#gallery img.thumb")
        expected = sum(1 for _, r in imagenette_model["rows"].iterrows()
                       if r["error"] is None and r["label"] is not None and r["label"] != r["prediction"])
        assert thumbs.count() == min(8, expected) > 0
        widths = thumbs.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        assert all(w > 0 for w in widths), widths
        thumbs.first.scroll_into_view_if_needed()
        assert thumbs.first.is_visible()
        captions = page.locator("#gallery figcaption").all_inner_texts()
        assert all("true:" in c and "predicted:" in c for c in captions)
        for ident in ("#reliability-img", "#curves-img"):
            assert page.locator(ident).evaluate("img => img.naturalWidth") > 0, ident
        curves_note = page.locator("#curves").inner_text()
        assert all(column in curves_note for column in CURVE_COLUMNS)
        assert page.locator("#per-class-table tbody tr").count() == 10
        # fit stored a drift profile: the report judges these predictions against it.
        assert page.locator("#drift-table tbody tr").count() == 4 and page.locator("#drift").is_visible()
        page.screenshot(path=str(report["dir"] / "report.png"), full_page=True)
        heat.screenshot(path=str(report["dir"] / "heatmap.png"))
        page.locator("#gallery").screenshot(path=str(report["dir"] / "gallery.png"))
    for name, min_colours in (("report.png", 50), ("heatmap.png", 20), ("gallery.png", 200)):
        assert_real_picture(report["dir"] / name, min_colours)  # real plot / photo content, not flat boxes


def test_compare_lines_up_reports(report, imagenette_model, tmp_path, spark, capsys):
    # A second "model": the same predictions judged with a different k and bins.
    second = tmp_path / "second"
    assert main(["evaluate", "--predictions", imagenette_model["predictions"], "--out", str(second),
                 "--labels", ",".join(imagenette_model["labels"]), "--gallery", "0", "--top-k", "2"]) == 0
    capsys.readouterr()
    assert main(["compare", str(report["dir"]), str(second), "--out", str(tmp_path / "cmp")]) == 0
    printed = json.loads(capsys.readouterr().out)
    first = load_result(report["dir"])
    assert printed["models"] == [load_card(imagenette_model["model_dir"]).name, "second"]
    assert printed["metrics"]["accuracy"] == [first.accuracy, first.accuracy]
    assert printed["metrics"]["top3_accuracy"][0] == first.top_k[3]
    assert printed["metrics"]["top3_accuracy"][1] is None and printed["metrics"]["top2_accuracy"][1] is not None
    assert set(printed["per_class_f1"]) == set(imagenette_model["labels"])
    assert (tmp_path / "cmp" / "compare.html").read_text().count("<tr>") > 10
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == printed


def test_thumbnails_from_builtin_local_and_hadoop_paths(spark, imagenette, tmp_path):
    photo = next((imagenette / "val" / "tench").iterdir())
    odd = tmp_path / "with space.jpg"
    odd.write_bytes(photo.read_bytes())
    paths = [
        "digits/all/00007.png",  # a built-in dataset row, re-encoded from the installed arrays
        "file:" + str(photo),
        "file://" + str(odd),  # file:// URI form
        odd.resolve().as_uri().replace("file:///", "file:/"),  # percent-encoded, read through Hadoop's form
        "file:/nonexistent/x.jpg",
    ]
    got = thumbnails(spark, paths)
    for thumb in got[:4]:
        assert thumb.data_uri and thumb.data_uri.startswith("data:image/jpeg;base64,"), thumb
    assert got[4].data_uri is None and "no such file" in got[4].error.lower()
