"""The epoch loop is task-agnostic, and its state round-trips through a checkpoint.

A task that is not classification (regressing each image's mean brightness) trains
through the same loop as the classifier, in this process, without Spark: its metrics
reach ``curves.csv`` and the result, the monitor picks the best epoch, and the weights
it exports are that epoch's. Data: 300 of scikit-learn's real 8x8 digit scans, written
as a sparkvision Parquet dataset with pyarrow.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparkvision.config import PreprocessConfig
from sparkvision.config.training import TrainConfig, apply_overrides
from sparkvision.training import tasks
from sparkvision.training.checkpoints import TrainState, latest_checkpoint
from sparkvision.training.engine import TrainJob, _train
from sparkvision.training.tasks import Batch, Task

PREPROCESS = PreprocessConfig(size=(8, 8), channels=1, resize_mode="resize", interpolation="bilinear",
                              mean=(0.5,), std=(0.5,))


@pytest.fixture(scope="module")
def digits_parquet(tmp_path_factory) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits-parquet")
    out = {}
    for part, rows in (("train", range(0, 240)), ("val", range(240, 300))):
        columns: dict[str, list] = {"path": [], "label": [], "error": [], "content": []}
        for i in rows:
            buffer = io.BytesIO()
            Image.fromarray((digits.images[i] * 16).clip(0, 255).astype(np.uint8)).save(buffer, "PNG")
            columns["path"].append(f"file:/digits/{i:04d}.png")
            columns["label"].append(str(digits.target[i]))
            columns["error"].append(None)
            columns["content"].append(buffer.getvalue())
        (root / part).mkdir()
        pq.write_table(pa.table(columns), root / part / "part-0.parquet", row_group_size=64)
        out[part] = str(root / part)
    return out


@dataclass
class BrightnessShard:
    images: np.ndarray
    brightness: np.ndarray
    decode_errors: dict[str, int]
    skipped: dict[str, int]

    def __len__(self) -> int:
        return len(self.images)


class BrightnessTask(Task):
    """Regress mean brightness in [0, 1]: targets, loss, metrics and export no classifier has."""

    name = "brightness"
    eval_metric_names = ("loss", "r2")
    maximize = frozenset({"val_r2"})
    exported: dict[str, torch.Tensor] | None = None

    def load(self, uri, part, rank, world, progress):
        from sparkvision.training.data import load_shard, read_index

        shard = load_shard(read_index(uri), self.job.classes, self.job.preprocess, rank, world)
        return BrightnessShard(shard.images, shard.images.mean(axis=(1, 2, 3)).astype(np.float32) / 255.0,
                               shard.decode_errors, shard.skipped)

    def build_model(self):
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
        return model.to(self.device), [{"params": list(model.parameters()), "lr_mult": 1.0}], []

    def train_batch(self, shard, rows, rng):
        return Batch(self.normalized(self.to_unit(shard.images[rows])), torch.from_numpy(shard.brightness[rows]))

    def loss(self, outputs, batch):
        return F.mse_loss(outputs[:, 0], batch.targets)

    def evaluate(self, model, shard):
        model.eval()
        with torch.no_grad():
            pred = model(self.normalized(self.to_unit(shard.images)))[:, 0].double()
        model.train()
        y = torch.from_numpy(shard.brightness).double()
        return torch.stack([((pred - y) ** 2).sum(), y.sum(), (y**2).sum(), torch.tensor(float(len(y)))])

    def metrics(self, counts, prefix):
        sse, sy, syy, n = (float(c) for c in counts)
        return {f"{prefix}_loss": sse / n, f"{prefix}_r2": 1 - sse / (syy - sy * sy / n), f"{prefix}_count": int(n)}

    def export(self, model, metrics, check_images):
        BrightnessTask.exported = {k: v.clone() for k, v in model.state_dict().items()}
        (Path(self.job.out_dir) / "brightness.json").write_text(json.dumps(metrics))
        return metrics


def _job(ds: dict[str, str], out: Path, task: str, **overrides) -> TrainJob:
    config = apply_overrides(TrainConfig(), {"epochs": 4, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 0.02},
                                             **overrides})
    return TrainJob(config=config, train_uri=ds["train"], val_uri=ds["val"], test_uri=None,
                    classes=[str(d) for d in range(10)], class_counts=[24] * 10, preprocess=PREPROCESS,
                    out_dir=str(out), name="b", use_gpu=False, threads=1, task=task)


def test_a_regression_task_trains_through_the_same_loop(digits_parquet, tmp_path, monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "brightness", BrightnessTask)
    result = _train(_job(digits_parquet, tmp_path, "brightness"), 0, 1, torch.device("cpu"))
    metrics, history = result["metrics"], result["history"]
    assert metrics["val_count"] == 60 and metrics["epochs_run"] == 4
    # Real learning: mean brightness is a linear function of the pixels this network can fit.
    assert metrics["val_r2"] > 0.8
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    # The monitor (val_loss, minimised) picks the best epoch, and that epoch's weights are exported.
    best = min(history, key=lambda h: h["val_loss"])
    assert metrics["best_epoch"] == metrics["exported_epoch"] == best["epoch"]
    assert metrics["val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    saved = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert all(torch.equal(saved["model"][k], v) for k, v in BrightnessTask.exported.items())
    with open(tmp_path / "curves.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == BrightnessTask.curve_columns() == [
        "epoch", "lr", "train_loss", "val_loss", "val_r2", "epoch_seconds", "train_samples_per_s"]
    assert [float(r["val_r2"]) for r in rows] == pytest.approx([h["val_r2"] for h in history], rel=1e-5)
    assert json.loads((tmp_path / "brightness.json").read_text())["val_r2"] == metrics["val_r2"]


def test_a_monitor_the_task_does_not_measure_is_refused(digits_parquet, tmp_path, monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "brightness", BrightnessTask)
    with pytest.raises(ValueError, match="monitor 'val_top1' is not a metric of the brightness task.*val_r2"):
        _train(_job(digits_parquet, tmp_path, "brightness", monitor="val_top1"), 0, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown training task 'nope'; known: brightness, classify"):
        _train(_job(digits_parquet, tmp_path, "nope"), 0, 1, torch.device("cpu"))


def test_train_state_keeps_the_best_epoch_by_the_monitors_direction():
    model = nn.Linear(2, 1)
    lower, higher = TrainState(), TrainState()
    for epoch, value in enumerate([0.5, 0.3, 0.4], start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        lower.observe({"epoch": epoch, "m": value}, "m", maximize=False, model=model)
        higher.observe({"epoch": epoch, "m": value}, "m", maximize=True, model=model)
    assert (lower.best, lower.best_epoch, lower.since_best) == (0.3, 2, 1)
    assert (higher.best, higher.best_epoch, higher.since_best) == (0.5, 1, 2)
    assert float(lower.best_state["weight"][0, 0]) == 2.0 and float(higher.best_state["weight"][0, 0]) == 1.0


def test_a_checkpoint_holds_the_state_as_plain_values(digits_parquet, tmp_path):
    """The checkpoint format: ``state`` is a dict of plain values (no sparkvision class), so
    checkpoints written before TrainState existed still resume, and any torch can read them."""
    _train(_job(digits_parquet, tmp_path, "classify", epochs=1, model={"arch": "smallcnn", "image_size": (8, 8)}),
           0, 1, torch.device("cpu"))
    payload = torch.load(latest_checkpoint(tmp_path), weights_only=False)
    assert set(payload) == {"epoch", "model", "optimizer", "scheduler", "state", "rng", "config", "classes",
                            "preprocess"}
    assert isinstance(payload["state"], dict) and set(payload["state"]) == {
        "history", "best", "best_epoch", "best_state", "since_best", "stopped_early"}
    state = TrainState.from_checkpoint(payload)
    assert state.epoch == 1 and state.best_epoch == 1 and state.best == state.history[0]["val_loss"]
    assert state.history == payload["state"]["history"] and state.to_dict().keys() == payload["state"].keys()


class HeadedBrightnessTask(BrightnessTask):
    """The brightness task on a network with a pretrained-style body and a separate head."""

    initial: dict[str, torch.Tensor] | None = None

    def build_model(self):
        from sparkvision.config import ModelConfig
        from sparkvision.training.modelbuild import param_groups

        class Headed(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
                self.head = nn.Linear(4, 1)

            def get_classifier(self):
                return self.head

            def forward(self, x):
                return self.head(self.body(x))

        model = Headed().to(self.device)
        HeadedBrightnessTask.initial = {k: v.clone() for k, v in model.state_dict().items()}
        groups, frozen = param_groups(model, ModelConfig(arch="custom", head_epochs=self.job.config.model.head_epochs),
                                      pretrained=True)
        return model, groups, frozen


def test_head_epochs_train_the_head_alone_then_the_backbone_joins(digits_parquet, tmp_path, monkeypatch):
    """``head_epochs``: during the warm-up the body's weights and batch-norm statistics stay
    exactly as built while the head learns; afterwards the body trains too."""
    monkeypatch.setitem(tasks.TASKS, "brightness", HeadedBrightnessTask)
    job = _job(digits_parquet, tmp_path, "brightness", epochs=3, model={"head_epochs": 2},
               checkpoint={"keep_last": 3})
    _train(job, 0, 1, torch.device("cpu"))
    initial = HeadedBrightnessTask.initial
    after = {epoch: torch.load(tmp_path / "checkpoints" / f"epoch-{epoch:04d}.pt", weights_only=False)["model"]
             for epoch in (1, 2, 3)}
    body = [k for k in initial if k.startswith("body.")]
    assert "body.1.running_mean" in body and "body.1.num_batches_tracked" in body
    for epoch in (1, 2):
        assert all(torch.equal(after[epoch][k], initial[k]) for k in body), epoch
        assert not torch.equal(after[epoch]["head.weight"], initial["head.weight"])
    assert not torch.equal(after[3]["body.0.weight"], initial["body.0.weight"])
    assert not torch.equal(after[3]["body.1.running_mean"], initial["body.1.running_mean"])


def test_head_epochs_are_refused_where_nothing_is_a_backbone(digits_parquet, tmp_path, monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "brightness", BrightnessTask)
    with pytest.raises(ValueError, match="head_epochs needs a pretrained backbone under a separate head"):
        _train(_job(digits_parquet, tmp_path, "brightness", model={"head_epochs": 1}), 0, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"head_epochs \(4\) must leave epochs \(4\)"):
        _job(digits_parquet, tmp_path, "brightness", model={"head_epochs": 4})


class StepDtypeBrightnessTask(BrightnessTask):
    """Records the dtype of the network's output in each training step."""

    step_dtypes: list[torch.dtype] = []

    def loss(self, outputs, batch):
        StepDtypeBrightnessTask.step_dtypes.append(outputs.dtype)
        return super().loss(outputs, batch)


@pytest.mark.parametrize(("precision", "step_dtype"), [("bf16", torch.bfloat16), ("auto", torch.float32)])
def test_bf16_precision_runs_each_step_under_autocast_and_keeps_the_weights_fp32(
        digits_parquet, tmp_path, monkeypatch, precision, step_dtype):
    """``precision="bf16"``: forward and loss in bfloat16 (torch.autocast, here on CPU); ``auto`` is fp32
    on CPU. Either way the model still learns and its weights, checkpoint and export stay fp32."""
    monkeypatch.setitem(tasks.TASKS, "brightness", StepDtypeBrightnessTask)
    StepDtypeBrightnessTask.step_dtypes = []
    result = _train(_job(digits_parquet, tmp_path, "brightness", scaling={"precision": precision}), 0, 1,
                    torch.device("cpu"))
    metrics = result["metrics"]
    assert set(StepDtypeBrightnessTask.step_dtypes) == {step_dtype}
    assert len(StepDtypeBrightnessTask.step_dtypes) == 4 * 240 // 16
    assert metrics["precision"] == ("bf16" if step_dtype == torch.bfloat16 else "fp32")
    assert metrics["val_r2"] > 0.8
    assert {v.dtype for v in StepDtypeBrightnessTask.exported.values() if v.is_floating_point()} == {torch.float32}


def test_an_unknown_precision_is_refused_when_the_config_is_made():
    with pytest.raises(ValueError, match="ScalingConfig.precision must be 'auto', 'fp32' or 'bf16', got 'fp16'"):
        apply_overrides(TrainConfig(), {"scaling": {"precision": "fp16"}})
