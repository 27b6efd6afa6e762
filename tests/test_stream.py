"""Continuous recognition: incremental prediction with lineage, and streaming prediction exactly once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from transfer_cases import bad_files

from sparkvision.cli.transfer import incremental_summary
from sparkvision.inference.predict import AppendedOutputError, load_model, predict, predict_incremental
from sparkvision.inference.stream import (
    parse_trigger,
    predict_stream,
    read_image_stream,
    start_predict_stream,
)
from sparkvision.io import load_images
from sparkvision.models.model_dir import load_card, model_digest, save_card

ROOT = Path(__file__).resolve().parents[1]
SPARKVISION = [sys.executable, "-m", "sparkvision.cli.main"]


def _photos(imagenette: Path, classes: list[str], start: int, count: int) -> list[Path]:
    return [p for name in classes for p in sorted((imagenette / "val" / name).iterdir())[start:start + count]]


def _land(files: list[Path], folder: Path) -> list[str]:
    """Copy ``files`` into ``folder/<class>/`` as a writer would (a temporary name, then a rename); their paths."""
    landed = []
    for file in files:
        target = folder / file.parent.name / file.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target.parent / f".{file.name}.part")  # hidden names are never read
        os.replace(target.parent / f".{file.name}.part", target)
        landed.append(f"file:{target}")
    return landed


def _paths_in(spark, out: Path) -> Counter:
    return Counter(r["path"] for r in spark.read.parquet(str(out)).select("path").collect())


def test_model_digest_follows_what_predicts_not_metrics(imagenet_model_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(imagenet_model_dir, copy)
    digest = model_digest(copy)
    assert digest == model_digest(imagenet_model_dir) and len(digest) == 16
    card = load_card(copy)
    card.metrics = {"accuracy": 0.5}
    card.provenance = {"note": "refitted elsewhere"}
    save_card(copy, card)
    assert model_digest(copy) == digest  # metrics and provenance do not change predictions
    card.tta = "flip"
    save_card(copy, card)
    assert model_digest(copy) != digest
    card.tta = "none"
    save_card(copy, card)
    with open(copy / "model.onnx", "ab") as handle:  # a changed graph is another model
        handle.write(b"\0")
    assert model_digest(copy) != digest


def test_parse_trigger_reads_the_three_kinds():
    assert parse_trigger("once") == {"once": True}
    assert parse_trigger("available-now") == {"availableNow": True}
    assert parse_trigger("processing-time=10s") == {"processingTime": "10000 milliseconds"}
    assert parse_trigger("processing-time=250ms") == {"processingTime": "250 milliseconds"}
    assert parse_trigger("processing-time=2 min") == {"processingTime": "120000 milliseconds"}
    for bad in ("continuous", "processing-time=", "processing-time=0s", "every 10s"):
        with pytest.raises(ValueError, match="trigger"):
            parse_trigger(bad)


def test_incremental_predicts_only_new_or_changed_files_and_keeps_lineage(
        spark, imagenette, imagenet_model_dir, tmp_path):
    src, out = tmp_path / "incoming", tmp_path / "predictions"
    first = _land(_photos(imagenette, ["tench", "golf_ball"], 0, 2), src)
    kinds = bad_files(src, "golf_ball")

    def run(**options):
        frame = load_images(spark, str(src), probe="header")
        return predict_incremental(spark, imagenet_model_dir, frame, str(out), source=str(src), **options)

    one = run()
    assert (one.batch, one.rows, one.errors, one.skipped) == (0, 7, 3, 0)
    assert one.error_kinds == dict(Counter(kinds.values()))
    # Nothing new: nothing written, and the summary says so.
    again = run()
    assert (again.batch, again.rows, again.skipped) == (None, 0, 7)
    assert "nothing new" in incremental_summary(again.to_dict()).headline
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(("_", "."))) == ["batch=0"]
    # A new photo, and one rewritten (new modification time): only those two.
    added = _land(_photos(imagenette, ["tench"], 5, 1), src)
    touched = Path(first[0].removeprefix("file:"))
    os.utime(touched, (time.time() + 5, time.time() + 5))
    three = run()
    assert (three.batch, three.rows, three.skipped) == (1, 2, 6)
    written = spark.read.parquet(str(out))
    rows = written.collect()
    assert Counter(r["path"] for r in rows if r["batch"] == 1) == Counter([*added, first[0]])
    assert _paths_in(spark, out)[first[0]] == 2 and len(rows) == 9
    # Lineage on every row: the model's digest, the time, the part, and the file's version.
    assert {r["model_version"] for r in rows} == {model_digest(imagenet_model_dir)}
    assert all(r["predicted_at"] is not None for r in rows)
    keys = {(r["path"], r["batch"]): r["source_key"] for r in rows}
    stat = os.stat(touched)
    assert keys[(first[0], 1)] == f"{stat.st_size}:{int(stat.st_mtime * 1000)}" != keys[(first[0], 0)]
    # The outputs are what a full predict of the same files gives.
    full = tmp_path / "full"
    predict(spark, imagenet_model_dir, load_images(spark, str(src), probe="header"), str(full))
    expected = {r["path"]: (r["prediction"], r["error"]) for r in spark.read.parquet(str(full)).collect()}
    assert {r["path"]: (r["prediction"], r["error"]) for r in rows} == expected

    # A new model version predicts everything again, into the next part.
    flipped = tmp_path / "flipped"
    shutil.copytree(imagenet_model_dir, flipped)
    card = load_card(flipped)
    card.tta = "flip"
    save_card(flipped, card)
    frame = load_images(spark, str(src), probe="header")
    other = predict_incremental(spark, flipped, frame, str(out), source=str(src))
    assert (other.batch, other.rows, other.skipped) == (2, 8, 0)
    assert other.model_version == model_digest(flipped) != model_digest(imagenet_model_dir)

    # A full predict's output is not an appended table: refused, left as it was.
    with pytest.raises(AppendedOutputError, match="not an appended predictions table"):
        predict_incremental(spark, imagenet_model_dir, frame, str(full), source=str(src))


def test_incremental_by_content_hash_ignores_touches_and_sees_new_bytes(
        spark, imagenette, imagenet_model_dir, tmp_path, cli):
    src, out = tmp_path / "incoming", tmp_path / "predictions"
    landed = _land(_photos(imagenette, ["parachute"], 0, 3), src)
    args = ["predict", "--model", imagenet_model_dir, "--input", src, "--out", out, "--incremental", "--hash"]
    code, printed = cli(*args)
    assert code == 0 and json.loads(printed)["rows"] == 3
    first = Path(landed[0].removeprefix("file:"))
    os.utime(first, (time.time() + 9, time.time() + 9))  # same bytes, new time: still known
    code, printed = cli(*args)
    assert code == 0 and (json.loads(printed)["batch"], json.loads(printed)["skipped"]) == (None, 3)
    shutil.copyfile(_photos(imagenette, ["parachute"], 7, 1)[0], first)  # new bytes under the old name
    code, printed = cli(*args)
    result = json.loads(printed)
    assert code == 0 and (result["batch"], result["rows"], result["skipped"]) == (1, 1, 2)
    keys = {r["batch"]: r["source_key"] for r in spark.read.parquet(str(out)).where(f"path = '{landed[0]}'").collect()}
    import hashlib

    assert keys[1] == "sha256:" + hashlib.sha256(first.read_bytes()).hexdigest() != keys[0]


def test_stream_takes_files_as_they_land_and_bad_files_become_error_rows(
        spark, imagenette, imagenet_model_dir, tmp_path):
    src, out, checkpoint = tmp_path / "incoming", tmp_path / "predictions", tmp_path / "checkpoint"
    expected = _land(_photos(imagenette, ["tench", "church"], 0, 1), src)
    query, summary = start_predict_stream(spark, imagenet_model_dir, str(src), str(out), str(checkpoint),
                                          trigger="processing-time=500ms", max_files_per_trigger=2)
    try:
        query.processAllAvailable()
        assert _paths_in(spark, out) == Counter(expected)
        # While the query runs: more photos, an empty file and a corrupt one, then more photos.
        expected += _land(_photos(imagenette, ["tench"], 1, 2), src)
        kinds = bad_files(src, "church")
        expected += [f"file:{src / 'church' / name}" for name in kinds]
        query.processAllAvailable()
        expected += _land(_photos(imagenette, ["church"], 1, 2), src)
        query.processAllAvailable()
        assert query.isActive and query.exception() is None
    finally:
        query.stop()
    assert _paths_in(spark, out) == Counter(expected)  # every file, once
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in spark.read.parquet(str(out)).collect()}
    for name, kind in kinds.items():
        assert rows[name]["error"].startswith(kind) and rows[name]["prediction"] is None
    good = [r for name, r in rows.items() if name not in kinds]
    assert all(r["error"] is None and r["label"] in ("tench", "church") for r in good)
    assert {r["batch"] for r in rows.values()} == set(range(summary.batches))
    assert summary.rows == len(expected) and summary.errors == len(kinds)
    # The same predictions as a batch predict of the same files.
    full = tmp_path / "full"
    predict(spark, imagenet_model_dir, load_images(spark, str(src), probe="header"), str(full))
    batch = {r["path"].rsplit("/", 1)[-1]: (r["prediction"], r["error"]) for r in spark.read.parquet(str(full)).collect()}
    assert {name: (r["prediction"], r["error"]) for name, r in rows.items()} == batch


def test_spark_ml_stages_transform_a_streaming_frame_like_a_batch_one(spark, imagenette, imagenet_model_dir,
                                                                       tmp_path):
    src = tmp_path / "incoming"
    _land(_photos(imagenette, ["gas_pump", "french_horn"], 0, 2), src)
    model = load_model(imagenet_model_dir)
    stream = read_image_stream(spark, str(src), max_files_per_trigger=1)
    assert stream.isStreaming
    query = (model.predictions(stream).writeStream.format("memory").queryName("sparkvision_stream_test")
             .trigger(availableNow=True).start())
    query.awaitTermination(300)
    streamed = {r["path"]: (r["prediction"], tuple(r["probability"])) for r in
                spark.table("sparkvision_stream_test").collect()}
    batch = {r["path"]: (r["prediction"], tuple(r["probability"])) for r in
             model.predictions(load_images(spark, str(src), probe="header")).collect()}
    assert len(streamed) == 4 and streamed.keys() == batch.keys()
    for path, (label, probs) in streamed.items():
        assert label == batch[path][0] and max(abs(a - b) for a, b in zip(probs, batch[path][1], strict=True)) < 1e-6


def _staged_parts(out: Path) -> list[Path]:
    """Part files that finished tasks wrote into a staged micro-batch (not yet renamed into place).
    None while Spark's committer moves a directory under the scan: the next poll sees where it went."""
    try:
        return [p for staging in out.glob(".batch=*.staging-*") for p in staging.rglob("part-*")
                if "/_temporary/0/task_" in str(p) or p.parent.name.startswith("batch=")]
    except FileNotFoundError:
        return []


def test_stream_killed_mid_batch_and_restarted_loses_and_duplicates_nothing(spark, imagenette, imagenet_model_dir,
                                                                           tmp_path):
    src, out, checkpoint = tmp_path / "incoming", tmp_path / "predictions", tmp_path / "checkpoint"
    expected = _land(_photos(imagenette, ["tench", "golf_ball", "church"], 0, 4), src)
    expected += [f"file:{src / 'golf_ball' / name}" for name in bad_files(src, "golf_ball")]
    args = [*SPARKVISION, "predict", "--model", str(imagenet_model_dir), "--input", str(src), "--out", str(out),
            "--stream", "--checkpoint", str(checkpoint), "--max-files-per-trigger", "3", "--master", "local[1]",
            "--trigger", "processing-time=200ms"]
    env = {**os.environ, "SPARKVISION_CACHE": str(ROOT / ".cache" / "sparkvision")}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        # Kill it once a part is written and a later micro-batch is half-written.
        while not ((out / "batch=0").is_dir() and _staged_parts(out)):
            assert proc.poll() is None, f"the stream ended early:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Restarted (here in the test's own session): the killed batch is replayed, the rest follow.
    done = predict_stream(spark, imagenet_model_dir, str(src), str(out), str(checkpoint), trigger="available-now",
                          max_files_per_trigger=3)
    assert done.stopped_by == "done" and done.batches >= 1
    assert _paths_in(spark, out) == Counter(expected)  # nothing lost, nothing twice
    assert spark.read.parquet(str(out)).where("error IS NOT NULL").count() == 3
    assert not list(out.glob(".batch=*"))  # the killed run's staged part was cleared


def test_predict_append_options_are_checked_before_spark_runs(caplog, imagenet_model_dir, tmp_path):
    from conftest import assert_usage_errors

    base = ["predict", "--model", imagenet_model_dir, "--input", tmp_path, "--out", tmp_path / "out"]
    assert_usage_errors(caplog, [
        ([*base, "--stream", "--incremental", "--checkpoint", tmp_path / "ck"], "choose one"),
        ([*base, "--stream"], "--stream needs --checkpoint"),
        ([*base, "--incremental", "--overwrite"], "append to it"),
        ([*base, "--stream", "--checkpoint", tmp_path / "ck", "--trigger", "every 5s"], "unknown trigger"),
        ([*base, "--trigger", "once"], "apply to --stream"),
        ([*base, "--hash"], "--hash applies to --incremental"),
    ])


def test_stream_runs_a_detector_like_batch_predict(spark, tmp_path):
    from detection_helpers import detector_model_dir, scene_png

    src = tmp_path / "scenes"
    src.mkdir()
    for index in range(2):
        (src / f"scene{index}.png").write_bytes(scene_png(index))
    (src / "broken.png").write_bytes(scene_png(0)[:200])
    model = detector_model_dir()
    summary = predict_stream(spark, model, str(src), str(tmp_path / "out"), str(tmp_path / "ck"),
                             max_files_per_trigger=2)
    assert (summary.kind, summary.rows, summary.errors, summary.batches) == ("detector", 3, 1, 2)
    full = tmp_path / "full"
    predict(spark, model, load_images(spark, str(src), probe="header"), str(full))

    def boxes(path: Path) -> dict:
        return {r["path"]: (r["error"] is None, sorted(b["label"] for b in (r["boxes"] or [])))
                for r in spark.read.parquet(str(path)).collect()}

    streamed = boxes(tmp_path / "out")
    assert streamed == boxes(full) and summary.boxes == sum(len(v[1]) for v in streamed.values()) > 0
    ok, labels = streamed[f"file:{src / 'scene0.png'}"]
    assert ok and set(labels) == {"green", "red"}  # default thresholds keep several boxes per object
    assert streamed[f"file:{src / 'broken.png'}"] == (False, [])
