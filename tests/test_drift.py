"""The drift monitor on controlled shifts of real photos.

A transfer-learning model is fitted on four imagenette-mini classes (50 train photos
each, the 40 val photos of each as validation: its reference profile). Then
``sparkvision predict`` and ``sparkvision drift`` run on

* the other 30 train photos of each class: the same distribution, never seen by the fit
  (must not be flagged);
* those photos blurred, darkened and re-encoded as low-quality JPEG (each must be flagged);
* those photos plus 40 photos of a fifth class the model never saw (must be flagged).

Every drift report is computed once (one fixture) and the tests read it. The statistics
themselves are checked against NumPy by hand in ``test_drift_stats.py``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import run_main
from PIL import Image, ImageEnhance, ImageFilter

from sparkvision.cli.common import ExitCode

CLASSES = ("church", "garbage_truck", "golf_ball", "tench")
NEW_CLASS = "parachute"
FIT_PER_CLASS = 50


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


#: The controlled shifts, each applied to the held-out photos (quality 90 unless the shift is the quality).
SHIFTS = {
    "blur": lambda im: _jpeg(im.filter(ImageFilter.GaussianBlur(2)), 90),
    "dark": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(0.25), 90),
    "jpeg": lambda im: _jpeg(im, 8),
}


def _link_or_write(target: Path, source: Path, shift=None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if shift is None:
        target.symlink_to(source)
    else:
        with Image.open(source) as image:
            target.write_bytes(shift(image.convert("RGB")))


def build_sets(imagenette: Path, root: Path) -> dict[str, Path]:
    """The fit's train and val folders and every judged set, as folders of links or shifted copies."""
    sets = {name: root / name for name in ("train", "val", "heldout", *SHIFTS, "new_class")}
    for cls in CLASSES:
        train = sorted((imagenette / "train" / cls).iterdir())
        for path in train[:FIT_PER_CLASS]:
            _link_or_write(sets["train"] / cls / path.name, path)
        for path in sorted((imagenette / "val" / cls).iterdir()):
            _link_or_write(sets["val"] / cls / path.name, path)
        for path in train[FIT_PER_CLASS:]:
            _link_or_write(sets["heldout"] / cls / path.name, path)
            _link_or_write(sets["new_class"] / cls / path.name, path)
            for name, shift in SHIFTS.items():
                _link_or_write(sets[name] / cls / path.name, path, shift)
    for path in sorted((imagenette / "val" / NEW_CLASS).iterdir()):
        _link_or_write(sets["new_class"] / NEW_CLASS / path.name, path)
    return sets


@pytest.fixture(scope="module")
def drift_runs(spark, imagenette, tmp_path_factory) -> dict:
    """The fitted model, and for every judged set its ``drift --json`` report and exit code."""
    root = tmp_path_factory.mktemp("drift")
    sets = build_sets(imagenette, root)
    model = root / "model"
    code, out = run_main("fit", "--train", sets["train"], "--val", sets["val"], "--out", model)
    assert code == 0, out
    runs = {"model": model, "fit": json.loads(out), "sets": sets}
    for name in ("heldout", *SHIFTS, "new_class"):
        predictions = root / f"predictions-{name}"
        code, out = run_main("predict", "--model", model, "--input", sets[name], "--out", predictions)
        assert code == 0, out
        code, out = run_main("drift", "--model", model, "--predictions", predictions)
        runs[name] = {"code": code, "report": json.loads(out), "predictions": predictions}
    return runs


def signals(report: dict) -> dict[str, float | None]:
    return {s["name"]: s["value"] for s in report["signals"]}


def test_fit_writes_a_small_profile_of_its_validation_predictions(drift_runs):
    from sparkvision.drift.stats import PROFILE_FILE, load_profile

    model = drift_runs["model"]
    assert (model / PROFILE_FILE).stat().st_size < 64_000
    profile = load_profile(model)
    ref = profile.reference
    assert profile.labels == sorted(CLASSES) and str(drift_runs["sets"]["val"]) in profile.source
    assert ref.rows == 160 and ref.error_rows == 0 and sum(ref.class_counts.values()) == 160
    assert sum(ref.confidence) == 160 and ref.image_rows == 160 and sum(ref.modes.values()) == 160
    assert ref.modes["RGB"] > 150  # and a few greyscale photos ("L")
    assert ref.feature_role == "features" and ref.feature_rows == 160 and len(ref.feature_mean) == 1280
    # The predicted shares are the validation predictions' own: fit's metrics count the same rows.
    per_class = drift_runs["fit"]["validation"]["per_class"]
    assert sum(ref.class_counts.values()) == sum(c["support"] for c in per_class.values())


def test_a_held_out_split_of_the_same_distribution_is_not_flagged(drift_runs):
    run = drift_runs["heldout"]
    values = signals(run["report"])
    assert run["code"] == ExitCode.OK and run["report"]["drift"] is False, values
    assert run["report"]["rows"] == 120 and run["report"]["sampled_images"] == 120
    # Margins: each statistic well under its threshold, not just under it.
    assert values["class_shares"] < 0.1 and values["confidence"] < 0.15
    assert values["image_bytes"] < 0.15 and values["feature_shift"] < 0.05


@pytest.mark.parametrize("shift", [*SHIFTS, "new_class"])
def test_each_controlled_shift_is_flagged(drift_runs, shift):
    run = drift_runs[shift]
    values = signals(run["report"])
    assert run["code"] == ExitCode.DRIFT and run["report"]["drift"] is True, values
    if shift != "new_class":
        # The pixels changed, and the model's features say so on their own.
        assert values["feature_shift"] > 0.1, values
    else:
        # A quarter of the photos show a class the model never saw: it is less sure, and its features moved.
        assert {"confidence", "feature_shift"} <= set(run["report"]["drifted"]), values


def test_window_judges_only_the_latest_rows_by_predicted_at(drift_runs, spark, tmp_path):
    """Held-out predictions stamped now and JPEG-damaged ones stamped three days ago: ``--window 1d``
    judges the held-out rows alone; the other way round it flags. Prediction signals only (--sample 0)."""
    from datetime import UTC, datetime, timedelta

    from pyspark.sql import functions as F

    now = datetime.now(UTC).replace(tzinfo=None)

    def stamped(name: str, when: datetime):
        return spark.read.parquet(str(drift_runs[name]["predictions"])).withColumn(
            "predicted_at", F.lit(when).cast("timestamp"))

    for recent, old, want in (("heldout", "jpeg", ExitCode.OK), ("jpeg", "heldout", ExitCode.DRIFT)):
        out = tmp_path / f"recent-{recent}"
        stamped(recent, now).unionByName(stamped(old, now - timedelta(days=3))).write.parquet(str(out))
        code, printed = run_main("drift", "--model", drift_runs["model"], "--predictions", out, "--window", "1d",
                                 "--sample", 0)
        report = json.loads(printed)
        assert code == want and report["rows"] == 120 and report["sampled_images"] == 0, report
        assert report["window"]["seconds"] == 86400
        assert "feature_shift" not in signals(report)
    code, printed = run_main("drift", "--model", drift_runs["model"], "--predictions", out, "--sample", 0)
    assert json.loads(printed)["rows"] == 240


def test_evaluate_report_has_a_drift_section_when_the_model_has_a_profile(drift_runs, tmp_path):
    report_dir = tmp_path / "report"
    code, _ = run_main("evaluate", "--predictions", drift_runs["new_class"]["predictions"], "--model",
                       drift_runs["model"], "--out", report_dir, "--gallery", 0)
    assert code == 0
    page = (report_dir / "report.html").read_text()
    assert 'id="drift"' in page and 'id="drift-table"' in page and 'data-flag="drift"' in page
    drift = drift_runs["new_class"]["report"]
    assert f"{signals(drift)['confidence']:.4f}" in page  # the same PSI as ``sparkvision drift``
    code, _ = run_main("evaluate", "--predictions", drift_runs["heldout"]["predictions"], "--out", tmp_path / "r2",
                       "--gallery", 0, "--labels", ",".join(sorted(CLASSES)))
    assert code == 0 and 'id="drift"' not in (tmp_path / "r2" / "report.html").read_text()  # no --model


def test_drift_refuses_detectors_models_without_a_profile_and_bad_options(drift_runs, tmp_path, caplog):
    import shutil

    from conftest import assert_usage_errors

    from sparkvision.drift.stats import PROFILE_FILE
    from sparkvision.models.model_dir import ModelCard, load_card, save_card

    predictions = drift_runs["heldout"]["predictions"]
    detector = tmp_path / "detector"
    save_card(detector, ModelCard(name="d", kind="detector", labels=["a"], preprocess=load_card(
        drift_runs["model"]).preprocess))
    assert_usage_errors(caplog, [
        (["drift", "--model", detector, "--predictions", predictions], "not supported for detectors yet"),
        (["drift", "--model", drift_runs["model"], "--predictions", predictions, "--window", "yesterday"],
         "--window takes"),
        (["drift", "--model", drift_runs["model"], "--predictions", predictions, "--psi-threshold", "0"],
         "must be a positive number"),
    ])
    bare = tmp_path / "bare"
    shutil.copytree(drift_runs["model"], bare)
    (bare / PROFILE_FILE).unlink()
    code, printed = run_main("drift", "--model", bare, "--predictions", predictions)
    assert code == ExitCode.INPUT and printed == ""


def test_train_writes_a_profile_of_its_logits_and_drift_judges_an_onnx_model(drift_runs, spark, tmp_path):
    """``train`` (kind onnx, logits only in its graph) profiles its val part in Spark after training."""
    from sparkvision.config.training import apply_overrides, defaults_for
    from sparkvision.drift.stats import load_profile
    from sparkvision.training.distributor import fit

    sets = drift_runs["sets"]
    config = apply_overrides(defaults_for("smallcnn"), {
        "epochs": 1, "batch_size": 32, "model": {"image_size": (32, 32), "channels": 3},
        "scaling": {"workers": 1}})
    model = tmp_path / "small"
    fit(spark, config, str(sets["train"]), str(model), val=str(sets["val"]))
    profile = load_profile(model)
    ref = profile.reference
    assert ref.rows == 160 and ref.feature_role == "logits" and len(ref.feature_mean) == len(CLASSES)
    assert ref.image_rows == 160 and str(sets["val"]) in profile.source
    predictions = tmp_path / "predictions"
    assert run_main("predict", "--model", model, "--input", sets["jpeg"], "--out", predictions)[0] == 0
    code, printed = run_main("drift", "--model", model, "--predictions", predictions, "--sample", 60)
    report = json.loads(printed)
    assert code == ExitCode.DRIFT and "image_bytes" in report["drifted"] and report["sampled_images"] == 60
    assert signals(report)["feature_shift"] is not None
