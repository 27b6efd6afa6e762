"""Configs validate themselves from their Literal types, on the driver, before any work."""

from __future__ import annotations

import dataclasses
import types
import typing

import pytest

from sparkvision.config import settings, training
from sparkvision.config.training import ModelConfig, OptimizerConfig, TrainConfig
from sparkvision.config.validation import Validated, literal_values

CONFIGS = [obj for module in (settings, training) for obj in vars(module).values()
           if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__]


def _literal_args(hint) -> tuple:
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return tuple(v for m in members if typing.get_origin(m) is typing.Literal for v in typing.get_args(m))


LITERAL_FIELDS = [(cls, name) for cls in CONFIGS for name, hint in typing.get_type_hints(cls).items()
                  if _literal_args(hint)]


def test_every_config_is_validated():
    assert len(CONFIGS) >= 20 and all(issubclass(cls, Validated) for cls in CONFIGS)
    names = {f"{cls.__name__}.{name}" for cls, name in LITERAL_FIELDS}
    assert {"OptimizerConfig.name", "ScheduleConfig.name", "LossConfig.class_weights", "TrainConfig.monitor",
            "PreprocessConfig.resize_mode", "TilingSettings.edge", "QuantizeSettings.weight_type"} <= names


@pytest.mark.parametrize(("cls", "name"), LITERAL_FIELDS, ids=lambda x: getattr(x, "__name__", x))
def test_every_literal_field_takes_exactly_its_values(cls, name):
    allowed = literal_values(cls, name)
    assert allowed == _literal_args(typing.get_type_hints(cls)[name])
    default = cls()
    for value in allowed:
        assert getattr(dataclasses.replace(default, **_consistent(cls, name, value)), name) == value
    with pytest.raises(ValueError) as error:
        dataclasses.replace(default, **{name: "no-such-value"})
    message = str(error.value)
    assert message.startswith(f"{cls.__name__}.{name} must be ") and message.endswith("got 'no-such-value'")
    assert all(repr(value) in message for value in allowed)


def test_allowed_values_are_read_from_the_types():
    assert literal_values(OptimizerConfig, "name") == ("sgd", "adamw")
    assert literal_values(ModelConfig, "channels") == (1, 3)
    assert literal_values(training.LossConfig, "class_weights") == ("none", "balanced")
    assert literal_values(TrainConfig, "monitor") == typing.get_args(training.Monitor)


def _consistent(cls, name, value):
    """A change of ``name`` to ``value``, with what else must change with it."""
    if cls is settings.PreprocessConfig and name == "channels":
        return {"channels": value, "mean": (0.5,) * value, "std": (0.5,) * value}
    return {name: value}


def test_a_bad_optimizer_name_fails_where_the_config_is_made():
    expected = "OptimizerConfig.name must be 'sgd' or 'adamw', got 'adam'"
    with pytest.raises(ValueError, match=expected):
        TrainConfig(optimizer=OptimizerConfig(name="adam"))
    with pytest.raises(ValueError, match=expected):
        TrainConfig.from_dict({"epochs": 3, "optimizer": {"name": "adam", "lr": 0.1}})
    with pytest.raises(ValueError, match=expected):
        training.apply_overrides(TrainConfig(), {"optimizer": {"name": "adam"}})


def test_unions_with_a_literal():
    assert ModelConfig(channels=None).channels is None and ModelConfig(channels=3).channels == 3
    with pytest.raises(ValueError, match=r"ModelConfig.channels must be 1, 3 or None, got True"):
        ModelConfig(channels=True)  # True == 1 in Python, but is no channel count
    assert training.LossConfig(class_weights=(1.0, 2.0)).class_weights == (1.0, 2.0)
    with pytest.raises(ValueError, match=r"LossConfig.class_weights must be 'none', 'balanced' or a tuple, "
                                         r"got 'balancd'"):
        training.LossConfig(class_weights="balancd")


def test_ranges_that_torch_would_refuse_inside_a_rank():
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        training.LossConfig(label_smoothing=1.5)
    with pytest.raises(ValueError, match="hflip_prob is a probability"):
        training.AugmentConfig(hflip_prob=2)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        OptimizerConfig(lr=-0.1)


def test_fit_refuses_an_unknown_network_or_monitor_before_spark(tmp_path):
    from sparkvision.training import fit

    # No Spark session at all: fit must fail before it would need one, and write nothing.
    with pytest.raises(KeyError, match="unknown model 'resnet50'"):
        fit(None, TrainConfig(model=ModelConfig(arch="resnet50")), train="digits", out=str(tmp_path / "m"))
    with pytest.raises(ValueError, match="unknown training task 'segment'"):
        fit(None, TrainConfig(), train="digits", out=str(tmp_path / "m"), task="segment")
    assert not (tmp_path / "m").exists()


def test_cli_arch_choices_come_from_the_registry(private_registry):
    from sparkvision.cli.main import build_parser
    from sparkvision.models import registry

    registry.register("tiny_test_net", settings.PreprocessConfig(), num_classes=2)(lambda **kwargs: None)
    parser = build_parser()
    args = parser.parse_args(["train", "--arch", "tiny_test_net", "--train", "x", "--out", "y"])
    assert args.arch == "tiny_test_net"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--arch", "resnet50", "--train", "x", "--out", "y"])
