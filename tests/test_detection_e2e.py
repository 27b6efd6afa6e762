"""Detection end to end on real BCCD photos: train through the engine, resume, detect in Spark, every row once.

A tiny run (a few photos, small input, 2 epochs) checks the plumbing, not the accuracy;
BENCHMARKS.md has the full run's mAP on the BCCD test list.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import SHARED_DATA

BCCD = SHARED_DATA / "bccd"


def _voc_subset(root: Path, train: int, val: int, test: int) -> Path:
    """A VOC folder of BCCD's first photos (links), with train/val/test lists."""
    ids = (BCCD / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    test_ids = (BCCD / "ImageSets" / "Main" / "test.txt").read_text().split()
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    chosen = {"train": ids[:train], "val": ids[train:train + val], "test": test_ids[:test]}
    for name, part in chosen.items():
        for i in part:
            (root / "JPEGImages" / f"{i}.jpg").symlink_to(BCCD / "JPEGImages" / f"{i}.jpg")
            (root / "Annotations" / f"{i}.xml").symlink_to(BCCD / "Annotations" / f"{i}.xml")
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(part) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory, spark):
    from sparkvision.config.training import apply_overrides, preset
    from sparkvision.training.distributor import fit

    root = _voc_subset(tmp_path_factory.mktemp("bccd"), 12, 4, 6)
    out = tmp_path_factory.mktemp("models") / "bccd_tiny"
    config = apply_overrides(preset("fcos-detect"), {
        "epochs": 2, "batch_size": 4, "model": {"image_size": (160, 160)}, "data": {"eval_batch_size": 4},
    })
    lists = root / "ImageSets" / "Main"
    result = fit(spark, config, str(lists / "train.txt"), str(out), val=str(lists / "val.txt"), task="detect")
    return root, out, result, config


def test_training_writes_a_detector_model_directory(tiny_detector):
    import onnx

    _, out, result, _ = tiny_detector
    card = json.loads((out / "sparkvision_model.json").read_text())
    assert card["kind"] == "detector" and card["architecture"] == "fcos_lite0"
    assert card["labels"] == ["Platelets", "RBC", "WBC"]
    assert card["preprocess"]["resize_mode"] == "letterbox" and card["preprocess"]["size"] == [160, 160]
    assert [o.name for o in onnx.load(str(out / "model.onnx")).graph.output] == ["boxes", "scores"]
    assert card["metrics"]["onnx_max_abs_diff"] < 1e-3
    curves = (out / "curves.csv").read_text().splitlines()
    assert "val_map50" in curves[0] and len(curves) == 3
    assert 0.0 <= card["metrics"]["val_map50"] <= 1.0
    assert list((out / "checkpoints").glob("*.pt"))


def test_resume_continues_from_the_last_checkpoint(tiny_detector, spark):
    from sparkvision.config.training import apply_overrides
    from sparkvision.training.distributor import fit

    root, out, _, config = tiny_detector
    lists = root / "ImageSets" / "Main"
    resumed = apply_overrides(config, {"epochs": 3, "checkpoint": {"resume": True}})
    fit(spark, resumed, str(lists / "train.txt"), str(out), val=str(lists / "val.txt"), task="detect")
    curves = (out / "curves.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in curves[1:]] == ["1", "2", "3"]


def test_detect_cli_every_row_once_and_same_boxes_as_the_runner(tiny_detector, tmp_path, cli, caplog):
    from sparkvision.detection.postprocess import DecodeSettings
    from sparkvision.detection.runner import DetectorRunner

    root, model, _, _ = tiny_detector
    photos = tmp_path / "photos"
    photos.mkdir()
    for jpg in sorted((root / "JPEGImages").glob("*.jpg"))[:5]:
        (photos / jpg.name).write_bytes(jpg.read_bytes())
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "empty.png").write_bytes(b"")
    out = tmp_path / "detections"
    code, _ = cli("detect", "--model", model, "--input", photos, "--out", out, "--score-threshold", "0.01")
    assert code == 0, caplog.text[-3000:]
    table = pq.read_table(out).to_pylist()
    assert len(table) == 7 and len({r["path"] for r in table}) == 7
    errors = {Path(r["path"]).name: r["error"] for r in table if r["error"]}
    assert set(errors) == {"broken.jpg", "empty.png"}
    assert errors["empty.png"].startswith("empty_file")
    runner = DetectorRunner.from_model_dir(model, settings=DecodeSettings(score_threshold=0.01))
    for row in table:
        if row["error"]:
            assert row["boxes"] is None
            continue
        data = (photos / Path(row["path"]).name).read_bytes()
        expected = runner.detect_records([data])[0][0]
        assert len(row["boxes"]) == len(expected)
        for got, want in zip(row["boxes"], expected, strict=True):
            assert got["label"] == want["label"]
            assert np.allclose([got[k] for k in ("score", "xmin", "ymin", "xmax", "ymax")],
                               [want[k] for k in ("score", "xmin", "ymin", "xmax", "ymax")], atol=1e-4)
            assert 0 <= got["xmin"] < got["xmax"] <= 640 and 0 <= got["ymin"] < got["ymax"] <= 480


def test_bad_detection_settings_fail_before_spark(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "sparkvision.cli.main", "detect", "--model", str(tmp_path), "--input", str(tmp_path),
         "--out", str(tmp_path / "o"), "--score-threshold", "1.5"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0 and "score_threshold" in done.stderr
