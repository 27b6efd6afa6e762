"""The report for a real imagenette-mini model, opened in headless Chromium; ``compare``; thumbnails.

The model is real: EfficientNet-Lite0 features (the registered ONNX export, run by
ONNX Runtime through the one preprocessing path) and a scikit-learn logistic
regression on part of the train split, scored on part of the val split. A few train
images per class keep it quick and leave enough mistakes for the gallery.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sparkvision.cli.main import main
from sparkvision.config import PreprocessConfig
from sparkvision.evaluation.report import load_result
from sparkvision.evaluation.thumbnails import thumbnails
from sparkvision.models.model_dir import ModelCard, save_card

PREDICTION_SCHEMA = "path string, label string, prediction string, probability array<double>, error string"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
TRAIN_PER_CLASS = 12
VAL_PER_CLASS = 16


def _features(listing: pd.DataFrame) -> tuple[np.ndarray, list[str | None]]:
    from sparkvision.models.onnx_export import registered_onnx
    from sparkvision.models.registry import get_spec
    from sparkvision.models.runtime import cached_model
    from sparkvision.preprocess import ImagePreprocessor

    contents = [Path(p).read_bytes() if Path(p).is_file() else b"this is not an image"
                for p in listing["local"]]
    batch = ImagePreprocessor(get_spec("efficientnet_lite0").preprocess)(contents)
    model = cached_model(registered_onnx("efficientnet_lite0"), threads=2)
    feats = model.run_batched(batch.tensor, "features", 32).reshape(len(batch.index), -1)
    out = np.full((len(contents), feats.shape[1]), np.nan, dtype=np.float32)
    out[batch.index] = feats
    return out, batch.errors


def _listing(root: Path, per_class: int) -> pd.DataFrame:
    from sparkvision.io.sources import list_folder

    files = list_folder(str(root)).files
    files = files.groupby("label").head(per_class)
    files = files.assign(local=[p[len("file:"):] for p in files["path"]])
    return files.reset_index(drop=True)[["path", "label", "local"]]


@pytest.fixture(scope="module")
def imagenette_model(spark, imagenette, tmp_path_factory):
    """(predictions Parquet, model dir with curves.csv) of a real transfer-learned classifier."""
    from sklearn.linear_model import LogisticRegression

    work = tmp_path_factory.mktemp("imagenette-eval")
    train = _listing(imagenette / "train", TRAIN_PER_CLASS)
    val = _listing(imagenette / "val", VAL_PER_CLASS)
    broken = work / "broken.jpg"
    broken.write_bytes(b"this is not an image")
    val = pd.concat([val, pd.DataFrame({"path": ["file:" + str(broken)], "label": ["tench"],
                                        "local": [str(broken)]})], ignore_index=True)
    val.loc[0, "label"] = None  # a row with no true label
    x_train, _ = _features(train)
    x_val, errors = _features(val)
    clf = LogisticRegression(max_iter=300, C=0.5).fit(x_train, train["label"])
    labels = [str(c) for c in clf.classes_]
    ok = np.array([e is None for e in errors])
    prob = np.zeros((len(val), len(labels)))
    prob[ok] = clf.predict_proba(x_val[ok])
    rows = pd.DataFrame({
        "path": val["path"],
        "label": val["label"],
        "prediction": [labels[int(p.argmax())] if good else None for p, good in zip(prob, ok, strict=True)],
        "probability": [p.tolist() if good else None for p, good in zip(prob, ok, strict=True)],
        "error": errors,
    })
    predictions = str(work / "predictions")
    spark.createDataFrame(rows, schema=PREDICTION_SCHEMA).coalesce(1).write.parquet(predictions)

    model_dir = work / "model"
    save_card(model_dir, ModelCard(
        name="imagenette-mini-logreg", kind="spark_pipeline", labels=labels, onnx=None,
        preprocess=PreprocessConfig(), architecture="efficientnet_lite0 features + logistic regression",
    ))
    # What the training engine writes: one row per epoch, whatever columns it tracks.
    pd.DataFrame({
        "epoch": [1, 2, 3, 4], "train_loss": [1.9, 1.1, 0.7, 0.5], "val_loss": [1.5, 0.9, 0.75, 0.72],
        "val_top1": [0.61, 0.8, 0.86, 0.88], "val_top5": [0.9, 0.97, 0.98, 0.99], "lr": [0.1, 0.05, 0.01, 0.001],
    }).to_csv(model_dir / "curves.csv", index=False)
    return {"predictions": predictions, "model_dir": str(model_dir), "work": work, "rows": rows,
            "labels": labels}


@pytest.fixture(scope="module")
def report(imagenette_model, spark):
    out = imagenette_model["work"] / "report"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["evaluate", "--predictions", imagenette_model["predictions"], "--out", str(out),
                     "--model", imagenette_model["model_dir"], "--top-k", "3", "--gallery", "8"])
    assert code == 0
    return {"dir": out, "printed": json.loads(stdout.getvalue())}


def test_evaluate_prints_and_writes_the_metrics(report, imagenette_model):
    rows = imagenette_model["rows"]
    printed = report["printed"]
    assert printed == json.loads((report["dir"] / "metrics.json").read_text())
    assert printed["rows"] == len(rows) == 10 * VAL_PER_CLASS + 1
    assert printed["error_rows"] == 1 and list(printed["error_kinds"]) == ["not_an_image"]
    assert printed["unlabeled_rows"] == 1
    scored = rows[rows["error"].isna() & rows["label"].notna()]
    assert printed["accuracy"] == pytest.approx((scored["label"] == scored["prediction"]).mean())
    assert printed["model_labels"] == imagenette_model["labels"]
    assert set(printed["top_k"]) == {"1", "3"} and printed["log_loss"] > 0
    assert 0.5 < printed["accuracy"] < 1.0  # a real model that makes a few mistakes
    assert printed["source"]["model"] == "imagenette-mini-logreg"


def test_report_opens_in_chromium_with_heat_map_and_gallery(report, imagenette_model):
    from playwright.sync_api import sync_playwright

    html_path = report["dir"] / "report.html"
    shot = report["dir"] / "report.png"
    remote: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda req: remote.append(req.url)
                    if not req.url.startswith(("file:", "data:")) else None)
            page.goto(html_path.as_uri())
            page.wait_for_load_state("load")
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
            assert page.locator("#per-class-table tbody tr").count() == 10
            page.screenshot(path=str(shot), full_page=True)
            heat.screenshot(path=str(report["dir"] / "heatmap.png"))
            page.locator("#gallery").screenshot(path=str(report["dir"] / "gallery.png"))
        finally:
            browser.close()
    assert remote == []  # self-contained: nothing fetched from anywhere
    for name, min_colours in (("report.png", 50), ("heatmap.png", 20), ("gallery.png", 200)):
        pixels = np.asarray(Image.open(report["dir"] / name).convert("RGB"))
        assert pixels.std() > 10, name  # not blank
        colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
        assert colours > min_colours, (name, colours)  # real plot / photo content, not flat boxes


def test_compare_lines_up_reports(report, imagenette_model, tmp_path, spark, capsys):
    # A second "model": the same predictions judged with a different k and bins.
    second = tmp_path / "second"
    assert main(["evaluate", "--predictions", imagenette_model["predictions"], "--out", str(second),
                 "--labels", ",".join(imagenette_model["labels"]), "--gallery", "0", "--top-k", "2"]) == 0
    capsys.readouterr()
    assert main(["compare", str(report["dir"]), str(second), "--out", str(tmp_path / "cmp")]) == 0
    printed = json.loads(capsys.readouterr().out)
    first = load_result(report["dir"])
    assert printed["models"] == ["imagenette-mini-logreg", "second"]
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
    assert got[4].data_uri is None and "no such file" in got[4].error
