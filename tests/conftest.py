"""Shared fixtures: one embedded Spark session for the whole run, real data locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPARKVISION_SHARED_DATA", ROOT.parent / "shared" / "data"))
IMAGENETTE = SHARED_DATA / "imagenette-mini"

# Exported ONNX graphs are cached per checkout, not in the user's home.
os.environ.setdefault("SPARKVISION_CACHE", str(ROOT / ".cache" / "sparkvision"))
# MLflow's usage telemetry would try to reach the internet from every process that logs.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def spark():
    """An embedded local[2] session shared by all tests (Spark cannot restart cheaply)."""
    from sparkvision.config import SparkSettings
    from sparkvision.session import get_spark

    session = get_spark(SparkSettings(master="local[2]", driver_memory="3g", app_name="sparkvision-tests"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def imagenette() -> Path:
    if not IMAGENETTE.is_dir():
        pytest.fail(f"real photos expected at {IMAGENETTE} (see ../shared/data/README.md)")
    return IMAGENETTE


def run_main(*args: object) -> tuple[int, str]:
    """``sparkvision ARGS --json`` in this process, on the session's Spark (no second JVM): (exit code, stdout)."""
    import contextlib
    import io

    from sparkvision.cli.main import main

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([*map(str, args), "--json"])
    return code, stdout.getvalue()


def assert_usage_errors(caplog, cases: list[tuple[list[object], str]]) -> None:
    """Each ``(args, words)``: ``sparkvision ARGS`` exits with the usage code, prints nothing, and logs ``words``."""
    from sparkvision.cli.common import ExitCode

    for args, words in cases:
        caplog.clear()
        code, printed = run_main(*args)
        assert code == ExitCode.USAGE and printed == "", args
        assert words in caplog.text, (args, caplog.text[-2000:])


@pytest.fixture
def private_registry(monkeypatch):
    """The model registry as a copy that this test may change; sparkvision's own families are
    imported first, so a family first imported inside the test is not lost from the real one."""
    from sparkvision import models
    from sparkvision.models import registry

    models.load_families()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry


@pytest.fixture(scope="session")
def imagenet_model_dir(tmp_path_factory):
    """A model directory of kind ``onnx``: pretrained EfficientNet-Lite0 with its 1000 ImageNet labels."""
    import shutil

    from sparkvision.models import get_spec
    from sparkvision.models.model_dir import ModelCard, save_card
    from sparkvision.models.onnx_export import registered_onnx

    spec = get_spec("efficientnet_lite0")
    out = tmp_path_factory.mktemp("onnx_model") / "imagenet"
    out.mkdir()
    shutil.copyfile(registered_onnx("efficientnet_lite0"), out / "model.onnx")
    save_card(out, ModelCard(name="imagenet-lite0", kind="onnx", labels=list(spec.labels),
                             preprocess=spec.preprocess, architecture="efficientnet_lite0"))
    return out


@pytest.fixture
def cli(spark):
    """The command in this process: ``cli("predict", ...)`` gives (exit code, stdout); its logs reach caplog."""
    return run_main


@pytest.fixture(scope="session")
def fitted_imagenette(spark, imagenette) -> dict:
    """``sparkvision fit`` on 10 train photos per class of imagenette-mini (8 to fit, 2 held out): the small
    real transfer-learning model (kind spark_pipeline, with model.onnx) that the evaluation, export, optimize
    and serving tests share. Tests must not change it: copy it first (``shutil.copytree``)."""
    import json

    from run_cache import built_once

    def fit(model_dir: Path) -> dict:
        code, out = run_main("fit", "--train", imagenette / "train", "--per-class", 10, "--out", model_dir)
        assert code == 0
        return json.loads(out)

    model_dir, printed = built_once("fitted-imagenette", fit)  # once per run, shared by xdist workers
    return {"model_dir": model_dir, **printed}
