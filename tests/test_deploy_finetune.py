"""Fine-tuning after structured pruning, through the training engine, for real.

A LeNet-5 is trained by ``sparkvision.training.fit`` on scikit-learn's 1,797 real digit
scans (built-in ``digits``), half of every convolution's output channels are pruned
(accuracy falls), and ``optimize`` fine-tunes the pruned network through ``fit`` again
(TorchDistributor, 2 gloo DDP ranks) before exporting it: the pruned channels must
still be exact zeros in the exported ONNX weights, and accuracy must come back up.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- masks, unit


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.Flatten(), nn.LazyLinear(3))


def _steps(model: nn.Module, masks, n: int = 5) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(4, 1, 8, 8, generator=gen)
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 3, (4,), generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if masks is not None:
            masks.apply()


def test_pruned_channels_stay_exactly_zero_across_optimizer_steps():
    from sparkvision.config import PruneSettings
    from sparkvision.deploy.prune import prune_channels, zero_channel_sets
    from sparkvision.training.masks import ChannelMasks

    model = _net()
    model(torch.zeros(1, 1, 8, 8))  # materialise the lazy layer
    summary = prune_channels(model, PruneSettings(amount=0.5))
    pruned = zero_channel_sets(model)
    assert summary.zeroed == 4 + 3 and sum(len(c) for c in pruned.values()) == 7
    before = {k: v.clone() for k, v in model.state_dict().items()}

    masks = ChannelMasks.of_zero_channels(model)
    assert len(masks) == 2 and masks.channels == 7
    _steps(model, masks)
    assert zero_channel_sets(model) == pruned  # the same channels, exactly zero
    kept = [i for i in range(8) if i not in pruned["0"]]
    assert not torch.equal(model[0].weight[kept], before["0.weight"][kept])  # the rest did train

    # Without the masks the same steps revive pruned channels (those that get a gradient).
    model.load_state_dict(before)
    _steps(model, None)
    revived = {k: pruned[k] - v for k, v in zero_channel_sets(model).items()}
    assert sum(len(c) for c in revived.values()) >= 3


def test_build_model_starts_from_a_saved_module_or_state(tmp_path):
    from sparkvision.config.training import ModelConfig
    from sparkvision.training.engine import build_model

    reference, _, _ = build_model(ModelConfig(arch="lenet5"), 10, 1)
    torch.save(reference, tmp_path / "module.pt")
    torch.save(reference.state_dict(), tmp_path / "state.pt")
    x = torch.randn(2, 1, 28, 28)
    want = reference.eval()(x)
    for name in ("module.pt", "state.pt"):
        model, groups, frozen = build_model(ModelConfig(arch="lenet5", init_from=str(tmp_path / name)), 10, 1)
        assert torch.equal(model.eval()(x), want)
        assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) and not frozen
    torch.save({"not": "weights"}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="neither a torch module"):
        build_model(ModelConfig(arch="lenet5", init_from=str(tmp_path / "junk.pt")), 10, 1)


# ---------------------------------------------------------------- prune, fine-tune, export: real


@pytest.fixture(scope="module")
def digits(spark, tmp_path_factory) -> dict[str, str]:
    """digits as stratified train (60 %), fine-tuning val (10 %) and measurement val (30 %) datasets."""
    from pyspark.sql import functions as F

    from sparkvision.io import assign_splits, load_images, write_dataset
    from sparkvision.io.schema import IMAGE_COLUMNS

    root = tmp_path_factory.mktemp("digits-ft")
    frame = assign_splits(load_images(spark, "digits"), {"train": 0.6, "tune": 0.1, "val": 0.3}, seed=5).cache()
    out = {}
    for name in ("train", "tune", "val"):
        out[name] = str(root / name)
        write_dataset(spark, frame.where(F.col("split") == name).select(*IMAGE_COLUMNS), out[name])
    frame.unpersist()
    return out


def _zero_filters_in_onnx(path) -> tuple[int, int]:
    """(all-zero output channels, output channels) over the Conv weights of an ONNX graph."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    zero = total = 0
    for node in graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            zero += int((np.abs(w.reshape(w.shape[0], -1)).sum(axis=1) == 0).sum())
            total += w.shape[0]
    assert total > 0
    return zero, total


def test_prune_then_fine_tune_through_the_training_engine(spark, digits, tmp_path):
    from sparkvision.config import MeasureSettings, PruneSettings
    from sparkvision.config.training import FINE_TUNE_PRUNED, TrainConfig, apply_overrides
    from sparkvision.deploy.optimize import REPORT_FILE, OptimizeRequest, optimize_model
    from sparkvision.deploy.prune import FineTuneRequest
    from sparkvision.models.model_dir import load_card
    from sparkvision.training import fit

    trained = tmp_path / "lenet"
    cfg = apply_overrides(TrainConfig(), {
        "epochs": 4, "batch_size": 32, "model": {"arch": "lenet5", "normalize": "data"},
        "optimizer": {"lr": 0.05}})
    fit(spark, cfg, train=digits["train"], val=digits["tune"], out=str(trained))
    card = load_card(trained)
    assert card.preprocess.mean != (0.5,)  # the data's own normalisation, which fine-tuning must reuse

    tune = apply_overrides(TrainConfig(), FINE_TUNE_PRUNED)
    tune = apply_overrides(tune, {"epochs": 3, "optimizer": {"lr": 0.02}, "scaling": {"workers": 2}})
    request = OptimizeRequest(
        prune=PruneSettings(amount=0.5), fine_tune=FineTuneRequest(train=digits["train"], val=digits["tune"],
                                                                   config=tune),
        val=digits["val"], force=True,
        measure=MeasureSettings(val_images=1000, bench_images=64, rounds=1),
    )
    out = tmp_path / "pruned"
    report = optimize_model(spark, trained, out, request).to_dict()

    prune = report["optimization"]["prune"]
    acc = prune["accuracy"]
    assert prune["finetuned"] and len(prune["fine_tune"]["history"]) == 3 and prune["fine_tune"]["workers"] == 2
    # Pruning half the channels costs accuracy; fine-tuning wins a real part of it back.
    assert acc["before"] > 0.85
    assert acc["after_prune"] < acc["before"] - 0.03
    assert acc["after_fine_tune"] > acc["after_prune"] + 0.03
    assert report["optimized"]["accuracy"] == acc["after_fine_tune"]
    # The pruned channels are still exact zeros in the exported weights.
    zero, total = _zero_filters_in_onnx(out / "model.onnx")
    assert zero == prune["channels_zeroed"] == prune["fine_tune"]["channels_kept_zero"] > 0
    assert json.loads((out / REPORT_FILE).read_text())["optimization"]["prune"]["accuracy"] == acc
    assert load_card(out).preprocess == card.preprocess


def test_batch_norms_after_pruned_channels_agree_in_eval_and_training():
    from sparkvision.config import PruneSettings
    from sparkvision.deploy.prune import prune_channels, zero_channel_sets
    from sparkvision.training.masks import settle_batch_norms

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)  # as after pretraining: not the pruned channels' constant
        model[1].bias.uniform_(-1, 1)
    prune_channels(model, PruneSettings(amount=0.5))
    pruned = sorted(zero_channel_sets(model)["0"])
    x = torch.randn(4, 3, 8, 8)
    beta = model[1].bias.detach()[pruned].view(1, -1, 1, 1)
    eval_out = model.eval()(x)[:, pruned]
    assert not torch.allclose(eval_out, beta.expand_as(eval_out))  # the mismatch being fixed
    assert settle_batch_norms(model, x) == len(pruned)
    eval_out = model.eval()(x)[:, pruned]
    assert torch.allclose(eval_out, beta.expand_as(eval_out), atol=1e-6)
