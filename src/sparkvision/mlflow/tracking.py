"""A sparkvision command as an MLflow run: ``--mlflow`` (or ``MLFLOW_TRACKING_URI``) on fit, train, evaluate,
optimize and detect.

:func:`tracked_command` wraps a command's handler in a run (ended ``FAILED`` if the
command raises); :func:`record` logs the command's result when it is printed
(``cli.common.emit``) and returns what the printed result gains under ``"mlflow"``
(run id, experiment, tracking URI, model URI). What a run holds:

* params: the command's options as given or defaulted (Spark and output options left
  out), and, when ``--out`` is a model directory, its card's provenance as
  ``model.<key>`` (backbone, classifier, chosen parameters, seed, ...);
* metrics: every number of the printed result (nested keys joined by ``.``, per-class
  rows as ``per_class.<label>.<metric>``), and for a model with ``curves.csv``
  (``train``) every curve column per epoch, step = epoch;
* artifacts: a model directory's card, ``metrics.json``, ``drift_profile.json`` and
  ``curves.csv`` plus ``curves.png``, and the model itself as a ``sparkvision`` flavour
  model named ``model`` (registered with ``--mlflow-register NAME``); an evaluation's
  ``report.html``, ``metrics.json`` and ``confusion_matrix.csv``/``.png``; a detection
  output's marker file.

Where runs go: the URI after ``--mlflow``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the working directory (MLflow's own default), which also holds
the model registry. An experiment this creates in a sqlite store keeps its artifacts in
``mlruns/`` beside the database file, wherever the command runs. The experiment is
``--mlflow-experiment``, else ``$MLFLOW_EXPERIMENT_NAME``, else ``sparkvision``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The commands that take ``--mlflow``.
TRACKED_COMMANDS = ("fit", "train", "evaluate", "optimize", "detect")
DEFAULT_EXPERIMENT = "sparkvision"
#: Options that say where or how a command runs, not what it computes.
_NOT_PARAMS = {"handler", "command", "json", "verbose", "quiet", "mlflow", "no_mlflow", "mlflow_experiment",
               "mlflow_register", "conf", "driver_memory", "overwrite"}
_MAX_PARAM = 6000  # MLflow's limit on a param value
_BATCH = 1000  # MLflow's limit on metrics per log_batch


def add_options(parser: argparse.ArgumentParser) -> None:
    """``--mlflow [URI]``, ``--no-mlflow``, ``--mlflow-experiment`` and ``--mlflow-register`` on a command."""
    group = parser.add_argument_group("MLflow (needs the mlflow extra: pip install 'sparkvision[mlflow]')")
    group.add_argument("--mlflow", nargs="?", const="", default=None, metavar="URI",
                       help="log this command as an MLflow run: params, metrics, artifacts, and a model; "
                       "URI is the tracking store (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here). "
                       "On whenever $MLFLOW_TRACKING_URI is set")
    group.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow even if $MLFLOW_TRACKING_URI "
                       "is set")
    group.add_argument("--mlflow-experiment", default=None, metavar="NAME",
                       help=f"experiment (default $MLFLOW_EXPERIMENT_NAME, else {DEFAULT_EXPERIMENT!r})")
    group.add_argument("--mlflow-register", default=None, metavar="NAME",
                       help="register the logged model as a new version of NAME in the model registry")


def tracking_uri(args: argparse.Namespace) -> str | None:
    """The tracking store this command logs to, or None when it does not log."""
    if getattr(args, "no_mlflow", False) or args.command not in TRACKED_COMMANDS:
        return None
    given = getattr(args, "mlflow", None)
    if given:
        return given
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if given == "" or getattr(args, "mlflow_register", None):
        return "sqlite:///" + os.path.abspath("mlflow.db")
    return None


def artifacts_beside(uri: str) -> str | None:
    """For a sqlite store, ``mlruns/`` beside the database file (MLflow would use the working directory's);
    None (the store's own default) for any other."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve().parent.joinpath("mlruns").as_uri()


@dataclass
class _Active:
    args: argparse.Namespace
    run_id: str
    experiment: str
    uri: str


_ACTIVE: _Active | None = None


@contextlib.contextmanager
def tracked_command(args: argparse.Namespace) -> Iterator[None]:
    """Run the command inside an MLflow run when asked to; a no-op (mlflow not imported) otherwise."""
    uri = tracking_uri(args)
    if uri is None:
        yield
        return
    from sparkvision.mlflow import require_mlflow

    mlflow = require_mlflow()
    with restored_settings():
        with _run(mlflow, args, uri):
            yield


@contextlib.contextmanager
def _run(mlflow: Any, args: argparse.Namespace, uri: str) -> Iterator[None]:
    global _ACTIVE
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    experiment = args.mlflow_experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    if mlflow.get_experiment_by_name(experiment) is None:
        try:
            mlflow.create_experiment(experiment, artifact_location=artifacts_beside(uri))
        except MlflowException:  # created meanwhile by another command
            pass
    mlflow.set_experiment(experiment)
    out = getattr(args, "out", None)
    from sparkvision import __version__

    run = mlflow.start_run(run_name=f"{args.command} {Path(out).name}" if out else args.command,
                           tags={"sparkvision.command": args.command, "sparkvision.version": __version__})
    _ACTIVE = _Active(args, run.info.run_id, experiment, uri)
    log.info("MLflow run %s (experiment %r, %s)", run.info.run_id, experiment, uri)
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    finally:
        _ACTIVE = None
        mlflow.end_run(status=status)


#: What MLflow copies its process-wide settings into, for its subprocesses to inherit.
_SETTINGS_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@contextlib.contextmanager
def restored_settings() -> Iterator[None]:
    """MLflow's process-wide settings as they were, afterwards: the tracking and registry URIs and the
    active experiment (module globals that ``set_tracking_uri`` and ``set_experiment`` also copy into
    environment variables). A command run inside a program, or a test, must not leave them changed:
    a leaked ``MLFLOW_TRACKING_URI`` would turn logging on for every later command."""
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    env = {name: os.environ.get(name) for name in _SETTINGS_ENV}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id = saved
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def record(result: Any) -> dict[str, Any] | None:
    """Log a command's printed result to the active run; what the result gains under ``"mlflow"`` (None: no run)."""
    active = _ACTIVE
    if active is None or not isinstance(result, dict):
        return None
    import mlflow

    args = active.args
    client = mlflow.MlflowClient()
    params = {k: v for k, v in _flatten_params(vars(args)).items() if k not in _NOT_PARAMS}
    metrics = _numbers(result)
    out = Path(args.out) if getattr(args, "out", None) and os.path.isdir(args.out) else None
    info: dict[str, Any] = {"run_id": active.run_id, "experiment": active.experiment, "tracking_uri": active.uri}
    from sparkvision.models.model_dir import is_model_dir, load_card, model_digest

    model_in = getattr(args, "model", None)
    if model_in and is_model_dir(model_in):
        params["model.input_version"] = model_digest(model_in)
    if out is not None and is_model_dir(out):
        params.update({f"model.{k}": v for k, v in _flatten_params(load_card(out).provenance).items()})
        params["model.version"] = model_digest(out)
    _log_params(client, active.run_id, params)
    _log_metrics(client, active.run_id, metrics)
    if out is not None and is_model_dir(out):
        info.update(_log_model_dir(client, active.run_id, out, args.mlflow_register))
    elif out is not None and (out / "report.html").is_file():
        _log_report(client, active.run_id, out, result)
    elif out is not None:
        for marker in out.glob("_sparkvision*.json"):
            client.log_artifact(active.run_id, str(marker))
    log.info("logged to MLflow run %s: %d params, %d metrics", active.run_id, len(params), len(metrics))
    return info


# ---------------------------------------------------------------- what is logged


def _log_model_dir(client: Any, run_id: str, out: Path, register: str | None) -> dict[str, Any]:
    """A model directory: its card and curves as artifacts, per-epoch metrics, and the model as a flavour model."""
    from sparkvision.models.model_dir import load_card

    for name in ("sparkvision_model.json", "metrics.json", "drift_profile.json", "curves.csv"):
        if (out / name).is_file():
            client.log_artifact(run_id, str(out / name))
    _log_curves(client, run_id, out)
    card = load_card(out)
    if card.kind == "detector" or not (card.onnx and (out / card.onnx).is_file()):
        if register:
            raise ValueError(f"--mlflow-register: {out} has no model.onnx classifier to log as an MLflow model")
        log.info("MLflow: %s is not logged as a model (the sparkvision flavour takes ONNX classifiers)", out)
        return {}
    from sparkvision.mlflow import log_model

    model = log_model(out, name="model", registered_model_name=register)
    info: dict[str, Any] = {"model_uri": model.model_uri}
    if register:
        info["registered_model"] = {"name": register, "version": str(model.registered_model_version)}
    client.set_tag(run_id, "sparkvision.model_uri", model.model_uri)
    return info


def _log_curves(client: Any, run_id: str, out: Path) -> None:
    """``curves.csv`` (``train``): each column as a metric per epoch, and the report's curves figure."""
    from sparkvision.evaluation.report import plot_curves, read_curves

    curves = read_curves(out)
    if curves is None or "epoch" not in curves.columns:
        return
    from mlflow.entities import Metric

    metrics = []
    stamp = _now_ms()
    for row in curves.to_dict("records"):
        step = int(row["epoch"])
        metrics += [Metric(_key(str(name)), float(value), stamp, step) for name, value in row.items()
                    if name != "epoch" and _is_number(value)]
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + _BATCH])
    _log_png(client, run_id, plot_curves(curves), "curves.png")


def _log_report(client: Any, run_id: str, out: Path, result: dict[str, Any]) -> None:
    """An evaluation: the report, its metrics, and the confusion matrix as CSV and as the report draws it."""
    for name in ("report.html", "metrics.json"):
        if (out / name).is_file():
            client.log_artifact(run_id, str(out / name))
    labels, matrix = result.get("confusion_labels"), result.get("confusion_matrix")
    if not labels or matrix is None:
        return
    rows = ["true\\predicted," + ",".join(_csv_cell(label) for label in labels)]
    rows += [_csv_cell(label) + "," + ",".join(str(int(n)) for n in counts) for label, counts in zip(labels, matrix,
                                                                                                     strict=True)]
    client.log_text(run_id, "\n".join(rows) + "\n", "confusion_matrix.csv")
    from sparkvision.config import EvaluationSettings
    from sparkvision.evaluation.report import load_result, plot_confusion

    _log_png(client, run_id, plot_confusion(load_result(out), EvaluationSettings().max_heatmap_classes),
             "confusion_matrix.png")


def _log_png(client: Any, run_id: str, data_uri: str | None, name: str) -> None:
    """A figure the report renders (a ``data:image/png`` URI) as a PNG artifact."""
    if not data_uri:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, name)
        path.write_bytes(base64.b64decode(data_uri.split(",", 1)[1]))
        client.log_artifact(run_id, str(path))


def _log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(_key(k), v[:_MAX_PARAM]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow's limit on params per log_batch
        client.log_batch(run_id, params=items[start:start + 100])


def _log_metrics(client: Any, run_id: str, metrics: dict[str, float]) -> None:
    from mlflow.entities import Metric

    stamp = _now_ms()
    items = [Metric(_key(k), v, stamp, 0) for k, v in metrics.items()]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, metrics=items[start:start + _BATCH])


# ---------------------------------------------------------------- flattening


def _flatten_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Scalars (and short lists of scalars) as strings under dotted keys; None and long structures left out."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten_params(value, f"{name}."))
        elif isinstance(value, bool | int | float | str | Path):
            flat[name] = str(value)
        elif isinstance(value, list | tuple) and value and all(isinstance(v, bool | int | float | str) for v in value):
            text = ",".join(map(str, value))
            if len(text) <= _MAX_PARAM:
                flat[name] = text
    return flat


def _numbers(values: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number of a result under dotted keys; a list of rows with a ``label`` by label."""
    found: dict[str, float] = {}
    if isinstance(values, dict):
        for key, value in values.items():
            found.update(_numbers(value, f"{prefix}{key}."))
    elif isinstance(values, list) and values and all(isinstance(v, dict) and "label" in v for v in values):
        for row in values:
            found.update(_numbers({k: v for k, v in row.items() if k != "label"}, f"{prefix}{row['label']}."))
    elif _is_number(values):
        found[prefix.rstrip(".")] = float(values)
    return found


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _key(name: str) -> str:
    """A valid MLflow key: letters, digits, ``_ - . /`` and spaces; anything else becomes ``_``."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
