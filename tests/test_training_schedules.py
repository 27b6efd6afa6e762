"""Learning-rate schedules follow their documented formulas, per iteration."""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sparkvision.config.training import (
    ModelConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    apply_overrides,
    defaults_for,
    preset,
)
from sparkvision.training.schedules import build_optimizer, build_scheduler, lr_curve

SGD = OptimizerConfig(name="sgd", lr=0.4, momentum=0.0)


def test_bigdl_decay_is_lr_over_one_plus_decay_times_iteration():
    curve = lr_curve(ScheduleConfig(name="decay", decay=0.0002), SGD, epochs=2, steps_per_epoch=30)
    assert curve == pytest.approx([0.4 / (1 + 0.0002 * it) for it in range(60)], rel=1e-12)


def test_constant():
    assert lr_curve(ScheduleConfig(), SGD, 2, 3) == pytest.approx([0.4] * 6)


def test_step_drops_by_gamma_every_step_epochs():
    curve = lr_curve(ScheduleConfig(name="step", step_epochs=2, gamma=0.1), SGD, epochs=5, steps_per_epoch=3)
    want = [0.4 * 0.1 ** (it // 6) for it in range(15)]
    assert curve == pytest.approx(want)


def test_cosine_with_warmup():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1, warmup_start=0.1, min_lr_ratio=0.05)
    curve = lr_curve(cfg, SGD, epochs=5, steps_per_epoch=4)
    warmup = 4
    assert curve[0] == pytest.approx(0.4 * 0.1)
    # Linear ramp up to the peak, reached when the warm-up ends.
    assert curve[:warmup + 1] == pytest.approx([0.4 * (0.1 + 0.9 * it / warmup) for it in range(warmup + 1)])
    cosine = curve[warmup:]
    n = len(cosine) - 1
    want = [0.4 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / n))) for i in range(n + 1)]
    assert cosine == pytest.approx(want)
    assert curve[-1] == pytest.approx(0.4 * 0.05)


def test_one_cycle_rises_to_lr_then_anneals():
    cfg = ScheduleConfig(name="onecycle", pct_start=0.25, div_factor=10, final_div_factor=100)
    curve = lr_curve(cfg, SGD, epochs=4, steps_per_epoch=10)
    peak = curve.index(max(curve))
    assert max(curve) == pytest.approx(0.4)
    assert peak == pytest.approx(0.25 * 40, abs=1)
    assert curve[0] == pytest.approx(0.4 / 10)
    assert curve[-1] == pytest.approx(0.4 / 10 / 100, rel=1e-2)
    assert all(a <= b for a, b in zip(curve[:peak], curve[1:peak + 1], strict=True))
    assert all(a >= b for a, b in zip(curve[peak:], curve[peak + 1:], strict=False))


def test_backbone_group_keeps_its_lower_rate_under_every_schedule():
    for cfg in (ScheduleConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.1), ScheduleConfig(name="onecycle"),
                ScheduleConfig(name="decay", decay=0.01), ScheduleConfig(name="step", step_epochs=1)):
        head, body = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        opt = build_optimizer([{"params": [head]}, {"params": [body], "lr_mult": 0.1}],
                              OptimizerConfig(name="adamw", lr=1e-3))
        sched = build_scheduler(opt, cfg, epochs=3, steps_per_epoch=5)
        for _ in range(15):
            assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * opt.param_groups[0]["lr"])
            opt.step()
            sched.step()


def test_bigdl_lenet_preset_is_the_published_recipe():
    cfg = preset("bigdl-lenet")
    assert (cfg.model.arch, cfg.epochs, cfg.batch_size) == ("lenet5", 20, 2048)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", 0.4, 0.0)
    assert (cfg.schedule.name, cfg.schedule.decay) == ("decay", 0.0002)
    assert cfg.model.normalize == "data"


def test_train_arch_lenet5_defaults_are_the_recipe_the_readme_states():
    from sparkvision.cli.main import build_parser
    from sparkvision.cli.train import config_from_args, flag_overrides

    parser = build_parser()

    def config(*flags: str) -> TrainConfig:
        return config_from_args(parser.parse_args(["train", "--train", "x", "--out", "y", *flags]))

    lenet = config("--arch", "lenet5")
    assert config() == lenet == defaults_for("lenet5")
    assert (lenet.epochs, lenet.batch_size, lenet.model.normalize) == (20, 64, "data")
    assert (lenet.optimizer.name, lenet.optimizer.lr, lenet.optimizer.weight_decay) == ("adamw", 0.003, 0.05)
    assert (lenet.schedule.name, lenet.schedule.warmup_epochs) == ("cosine", 1.0)
    assert (lenet.augment.rotation_degrees, lenet.augment.crop_prob, lenet.augment.crop_scale) == (10, 0.5, (0.8, 1))
    assert lenet.augment.hflip_prob == 0  # a mirrored digit is another glyph
    # The README spells the defaults out as flags; over the generic defaults they give the same config.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    stated = re.search(r"`train --arch lenet5` defaults: `([^`]+)`", readme)
    assert stated, "the README's training section states lenet5's default recipe"
    given = flag_overrides(parser.parse_args(["train", "--train", "x", "--out", "y", *shlex.split(stated[1])]))
    assert apply_overrides(TrainConfig(), given) == lenet
    # Flags still win; a preset replaces the recipe; other networks keep the generic defaults.
    assert config("--lr", "0.01").optimizer == replace(lenet.optimizer, lr=0.01)
    assert config("--preset", "bigdl-lenet") == preset("bigdl-lenet")
    assert config("--arch", "smallcnn") == TrainConfig(model=ModelConfig(arch="smallcnn"))


def test_config_round_trips_and_rejects_uneven_batches():
    cfg = preset("bigdl-lenet")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="multiple of the workers"):
        TrainConfig(batch_size=127, scaling=cfg.scaling.__class__(workers=2))


def test_the_finetune_preset_round_trips_through_its_flags_and_every_stage_can_be_unfrozen():
    from sparkvision.cli.main import build_parser
    from sparkvision.cli.train import config_from_args, flag_overrides, recipe_flags
    from sparkvision.config.training import PRESETS

    parser = build_parser()

    def args(*flags: str):
        return parser.parse_args(["train", "--train", "x", "--out", "y", *flags])

    finetune = config_from_args(args("--preset", "finetune"))
    assert finetune == preset("finetune")
    assert (finetune.model.arch, finetune.model.pretrained, finetune.monitor) == ("efficientnet_lite0", True, "val_top1")
    # The preset spelled out as flags gives the same configuration over the generic defaults.
    given = flag_overrides(args(*shlex.split(recipe_flags(PRESETS["finetune"]))))
    assert apply_overrides(TrainConfig(), given) == finetune
    # "all" unfreezes every stage (the config's None), and writes back as "all".
    every = config_from_args(args("--preset", "finetune", "--unfreeze-stages", "all", "--head-epochs", "1"))
    assert every.model.unfreeze_stages is None and every.model.head_epochs == 1
    assert "--unfreeze-stages all" in recipe_flags({"model": {"unfreeze_stages": None}})
    with pytest.raises(SystemExit):
        args("--unfreeze-stages", "most")
