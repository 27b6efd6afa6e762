"""Distributed training for real: TorchDistributor, gloo DDP on 2 ranks, checkpoints, the CLI.

Data: scikit-learn's 1,797 real 8x8 digit scans (built-in ``digits``), written once as
Parquet datasets. The training CLI runs are subprocesses with their own Spark, killed with
SIGKILL for the resume test, as a user's crashed job would be; predict runs in this process.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sparkvision.io.schema import IMAGE_COLUMNS, IMAGE_SCHEMA
from sparkvision.testing.proc import descendants

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "sparkvision.cli.main"]
SPARK = ["--master", "local[2]", "--driver-memory", "1g"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_ds(spark, tmp_path_factory) -> dict[str, str]:
    """digits as train/val Parquet datasets (80/20, stratified), plus two unusable rows in train."""
    from pyspark.sql import functions as F

    from sparkvision.io import assign_splits, load_images, write_dataset

    root = tmp_path_factory.mktemp("digits")
    frame = assign_splits(load_images(spark, "digits"), {"train": 0.8, "val": 0.2}, seed=3).cache()
    bad = spark.createDataFrame(
        [("bad/corrupt.png", "3", b"\x89PNG not really", "PNG", "L", 8, 8, 1, None),
         ("bad/unreadable.png", "4", None, None, None, None, None, None, "unreadable: permission denied")],
        schema=IMAGE_SCHEMA,
    )
    out = {}
    for name in ("train", "val"):
        part = frame.where(F.col("split") == name).select(*IMAGE_COLUMNS)
        if name == "train":
            part = part.unionByName(bad)
        out[name] = str(root / name)
        write_dataset(spark, part, out[name])
    frame.unpersist()
    return out


def _probe(delay: float) -> dict[str, int]:
    """Rank 0 finishes last, so a naive TorchDistributor run would hand back rank 1's value."""
    rank = int(os.environ["RANK"])
    if rank == 0:
        time.sleep(delay)
    return {"rank": rank, "world": int(os.environ["WORLD_SIZE"])}


def test_only_rank_zeros_result_comes_back(spark):
    from pyspark import cloudpickle

    from sparkvision.training import run_on_ranks

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        got = run_on_ranks(_probe, 3.0, workers=2, local_mode=True, use_gpu=False)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert got == {"rank": 0, "world": 2}


def test_shards_are_disjoint_balanced_and_skip_bad_rows_loudly(digits_ds):
    from sparkvision.config.training import ModelConfig
    from sparkvision.training.data import load_shard, read_index
    from sparkvision.training.engine import resolve_preprocess

    index = read_index(digits_ds["train"])
    classes = sorted(index.class_counts())
    assert classes == [str(d) for d in range(10)]
    pp = resolve_preprocess(ModelConfig(arch="lenet5"))
    shards = [load_shard(index, classes, pp, rank, 2) for rank in range(2)]
    paths = [set(s.paths) for s in shards]
    assert not paths[0] & paths[1]
    usable = len(index.usable({c: i for i, c in enumerate(classes)}))
    # The corrupt PNG passes the index (no error recorded at ingest) and fails decoding.
    assert len(shards[0]) + len(shards[1]) == usable - 1
    assert sum(sum(s.decode_errors.values()) for s in shards) == 1
    assert index.skipped({c: i for i, c in enumerate(classes)}) == {"unreadable": 1}
    assert abs(len(shards[0]) - len(shards[1])) <= 1
    for shard in shards:
        assert set(np.unique(shard.labels)) == set(range(10))
        assert shard.images.shape[1:] == (28, 28, 1) and shard.images.dtype == np.uint8
    # A shard is the same whatever the file layout: decoding again gives the same rows.
    again = load_shard(read_index(digits_ds["train"]), classes, pp, 1, 2)
    assert again.paths == shards[1].paths and np.array_equal(again.images, shards[1].images)


def _train_cmd(ds: dict[str, str], out: Path, *extra: str) -> list[str]:
    return [*CLI, "train", "--arch", "smallcnn", "--image-size", "16", "--train", ds["train"], "--val", ds["val"],
            "--epochs", "4", "--batch-size", "32", "--workers", "2", "--lr", "0.05", "--rotate", "10",
            "--erase", "0.25", "--out", str(out), *SPARK, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "SPARKVISION_CACHE": str(ROOT / ".cache" / "sparkvision")}


def _run_on_a_terminal(cmd: list[str], timeout: float = 600) -> tuple[int, str, str]:
    """Run ``cmd`` with stderr on a pseudo-terminal, as a user at a shell would (progress bars on)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=_env())
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer (the command, its ranks) has closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=30)
        os.close(master)
    return proc.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def uninterrupted(digits_ds, tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("runs") / "a"
    # Logged to MLflow as well (test_train_logs_every_epoch_to_mlflow): a sqlite store beside the model.
    tracking = f"sqlite:///{out.parent / 'mlflow.db'}"
    code, stdout, terminal = _run_on_a_terminal(_train_cmd(digits_ds, out, "--mlflow", tracking,
                                                           "--mlflow-register", "digits"))
    assert code == 0, terminal[-3000:]
    return out, json.loads(stdout), terminal


def test_cli_train_end_to_end(uninterrupted):
    from sparkvision.models.model_dir import is_model_dir, load_card

    out, result, terminal = uninterrupted
    # Rank 0 draws a progress bar per epoch on the user's terminal, and logs each epoch.
    for epoch in range(1, 5):
        assert re.search(rf"epoch {epoch}/4: 100%\|.*\| \d+/\d+ ", terminal), terminal[-2000:]
        assert f"epoch {epoch}/4, lr" in terminal
    metrics = result["metrics"]
    assert metrics["workers"] == 2 and metrics["epochs_run"] == 4
    assert metrics["val_top1"] > 0.9  # chance is 0.1
    assert metrics["val_top5"] >= metrics["val_top1"]
    assert metrics["val_count"] == 359
    # Nothing vanishes silently: the unreadable row (from ingest) and the corrupt PNG (found
    # when a rank decoded it) are both reported, by kind.
    skipped = metrics["skipped_rows"]["train"]
    assert skipped["unreadable"] == 1 and sum(skipped.values()) == 2
    assert is_model_dir(out)
    card = load_card(out)
    assert card.kind == "onnx" and card.labels == [str(d) for d in range(10)]
    assert card.preprocess.size == (16, 16) and card.architecture == "smallcnn"
    assert (out / "model.onnx").is_file() and (out / "labels.txt").read_text().split() == card.labels
    curves = (out / "curves.csv").read_text().splitlines()
    assert curves[0].startswith("epoch,lr,train_loss") and len(curves) == 5
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "epoch-0003.pt", "epoch-0004.pt"]
    assert not (out / ".work").exists()


def test_train_logs_every_epoch_to_mlflow(uninterrupted):
    """``train --mlflow``: params, the curves per epoch, the card and curves as artifacts, a registered model."""
    import csv

    mlflow = pytest.importorskip("mlflow")
    out, result, _ = uninterrupted
    uri = result["mlflow"]["tracking_uri"]
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    run = client.get_run(result["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["sparkvision.command"] == "train"
    assert run.data.params["arch"] == "smallcnn" and run.data.params["epochs"] == "4"
    assert run.data.params["lr"] == "0.05" and len(run.data.params["model.version"]) == 16
    assert run.data.metrics["metrics.val_top1"] == pytest.approx(result["metrics"]["val_top1"])
    with open(out / "curves.csv") as handle:
        curves = list(csv.DictReader(handle))
    for column in ("train_loss", "val_top1", "lr"):
        history = client.get_metric_history(run.info.run_id, column)
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
            [(int(r["epoch"]), pytest.approx(float(r[column]))) for r in curves], column
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"sparkvision_model.json", "curves.csv", "curves.png"} <= artifacts
    version = client.get_model_version("digits", result["mlflow"]["registered_model"]["version"])
    assert version.run_id == run.info.run_id
    from sparkvision.mlflow.tracking import restored_settings

    with restored_settings():
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        model = mlflow.models.Model.load(f"models:/digits/{version.version}")
    assert model.flavors["sparkvision"]["kind"] == "onnx" and model.flavors["sparkvision"]["labels"] == 10


def test_model_dirs_onnx_matches_the_torch_model(uninterrupted, digits_ds):
    import onnxruntime as ort

    from sparkvision.models import create_model
    from sparkvision.models.model_dir import load_card, onnx_path
    from sparkvision.preprocess import ImagePreprocessor
    from sparkvision.training.data import read_contents, read_index

    out, result, _ = uninterrupted
    card = load_card(out)
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=False)
    assert best["epoch"] == result["metrics"]["exported_epoch"]
    model = create_model("smallcnn", num_classes=10)
    model.load_state_dict(best["model"])
    model.eval()
    index = read_index(digits_ds["val"])
    batch = ImagePreprocessor(card.preprocess)(read_contents(index, np.arange(64)))
    with torch.no_grad():
        want = model(torch.from_numpy(batch.tensor)).numpy()
    got = ort.InferenceSession(str(onnx_path(out)), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": batch.tensor})[0]
    assert np.abs(got - want).max() < 1e-4
    assert np.array_equal(got.argmax(1), want.argmax(1))
    labels = np.array([card.labels.index(lab) for lab in index.labels[:64]])
    assert (got.argmax(1) == labels).mean() > 0.85


def _pillow_decodes(content: bytes) -> bool:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(content)) as img:
            img.load()
        return True
    except Exception:
        return False


def test_train_int8_replaces_model_onnx_only_when_the_guard_passes(uninterrupted, digits_ds, spark, tmp_path):
    """What ``train --int8`` does after training (``cli.train._int8``): calibrate on training rows, judge
    on --val rows, and keep int8 in model.onnx only within the allowed drop; the card records both."""
    import shutil

    import onnx

    from sparkvision.deploy.int8 import quantize_model_dir
    from sparkvision.deploy.measure import sample_rows
    from sparkvision.io import load_images
    from sparkvision.models.model_dir import load_card

    out, _, _ = uninterrupted
    calibration = sample_rows(load_images(spark, digits_ds["train"]), 300)
    val = sample_rows(load_images(spark, digits_ds["val"]), 1000)
    decodable = sum(_pillow_decodes(content) for _, _, content in calibration)  # the corrupt PNG is left out
    fp32 = (out / "model.onnx").read_bytes()
    verdicts = {}
    for allowed in (100.0, -1.0):  # anything goes; nothing goes (int8 would have to gain a point)
        model_dir = tmp_path / f"m{allowed:g}"
        shutil.copytree(out, model_dir)
        decision = quantize_model_dir(model_dir, calibration, val, allowed)
        card = load_card(model_dir)
        assert card.metrics["int8"] == decision.to_dict() and card.provenance["precision"] == decision.precision
        assert decision.val_images == 359 and decision.calibration_images == decodable
        ops = {n.op_type for n in onnx.load(str(model_dir / "model.onnx")).graph.node}
        assert ("QuantizeLinear" in ops) == decision.accepted
        verdicts[allowed] = decision
    kept, refused = verdicts[100.0], verdicts[-1.0]
    assert kept.accepted and kept.precision == "int8" and kept.top1_agreement > 0.9
    assert (tmp_path / "m-1" / "model.onnx").read_bytes() == fp32 or refused.accepted
    assert kept.fp32_accuracy == refused.fp32_accuracy  # the same fp32 graph on the same rows


def test_sparkvision_predict_takes_the_trained_model_dir(uninterrupted, digits_ds, tmp_path, cli, caplog):
    """The transfer-learning path's batch prediction runs the model directory as it is, and
    agrees with the accuracy training measured on the same validation rows (in this process's Spark)."""
    import pyarrow.parquet as pq

    out, result, _ = uninterrupted
    predictions = tmp_path / "pred"
    code, _ = cli("predict", "--model", out, "--input", digits_ds["val"], "--out", predictions)
    assert code == 0, caplog.text[-3000:]
    table = pq.read_table(predictions).to_pandas()
    assert len(table) == result["metrics"]["val_count"] and table["error"].isna().all()
    accuracy = (table["prediction"] == table["label"]).mean()
    # Same preprocessing, ONNX vs torch logits: at most a near-tie may flip one row.
    assert accuracy == pytest.approx(result["metrics"]["val_top1"], abs=1.01 / len(table))


def test_killed_run_resumes_to_the_same_result(uninterrupted, digits_ds, tmp_path):
    ref_out, ref, _ = uninterrupted
    out = tmp_path / "b"
    proc = subprocess.Popen(_train_cmd(digits_ds, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(), start_new_session=True)
    ours: set[int] = set()
    deadline = time.time() + 600
    while not (out / "checkpoints" / "epoch-0001.pt").exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        ours.update(descendants(proc.pid))
        time.sleep(0.05)
    ours.update(descendants(proc.pid))
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its JVM and torchrun; ranks run in their own sessions
    proc.wait()
    # Orphaned ranks notice their parent is gone and exit by themselves.
    deadline = time.time() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in ours) and time.time() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in ours if Path(f"/proc/{pid}").exists()], "training processes outlived the driver"
    assert not (out / "sparkvision_model.json").exists(), "the killed run must not have finished"

    done = subprocess.run(_train_cmd(digits_ds, out, "--resume"), capture_output=True, text=True, env=_env(),
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads(done.stdout)["metrics"]
    assert 1 <= resumed["resumed_from_epoch"] < 4
    timing = {"train_samples_per_s", "data_load_seconds", "resumed_from_epoch"}
    assert {k: v for k, v in resumed.items() if k not in timing} == {
        k: v for k, v in ref["metrics"].items() if k not in timing}
    mine = torch.load(out / "checkpoints" / "epoch-0004.pt", weights_only=False)
    theirs = torch.load(ref_out / "checkpoints" / "epoch-0004.pt", weights_only=False)
    assert mine["model"].keys() == theirs["model"].keys()
    assert all(torch.equal(mine["model"][k], theirs["model"][k]) for k in mine["model"])
    assert [{k: v for k, v in h.items() if k not in ("epoch_seconds", "train_samples_per_s")}
            for h in mine["state"]["history"]] == [
        {k: v for k, v in h.items() if k not in ("epoch_seconds", "train_samples_per_s")}
        for h in theirs["state"]["history"]]


def test_early_stopping_with_every_option_on(spark, digits_ds, tmp_path):
    """lr 0 cannot improve the validation loss, so patience 2 stops after epoch 3, exactly;
    meanwhile every augmentation, the focal loss, class weights and a schedule run for real."""
    from sparkvision.training import TrainConfig, apply_overrides, fit

    cfg = apply_overrides(TrainConfig(), {
        "epochs": 10, "batch_size": 64, "patience": 2,
        "model": {"arch": "lenet5", "normalize": "data"},
        "optimizer": {"lr": 0.0, "grad_clip_norm": 1.0},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "loss": {"name": "focal", "label_smoothing": 0.1, "class_weights": "balanced"},
        "augment": {"crop_prob": 0.5, "hflip_prob": 0.5, "rotation_degrees": 10, "brightness": 0.2,
                    "contrast": 0.2, "blur_prob": 0.3, "erase_prob": 0.3, "mixup_alpha": 0.2, "cutmix_alpha": 1.0},
        "data": {"test_fraction": 0.3},
    })
    result = fit(spark, cfg, train=digits_ds["val"], val=digits_ds["val"], out=str(tmp_path / "m"))
    m = result.metrics
    assert m["stopped_early"] and m["epochs_run"] == 3 and m["best_epoch"] == 1
    assert len(result.history) == 3
    assert m["test_count"] > 0 and 0 <= m["test_top1"] <= 1
    # Data normalisation: the card carries the training set's own mean/std, not LeNet's default.
    assert result.preprocess["mean"] != [0.5] and 0 < result.preprocess["mean"][0] < 0.5
