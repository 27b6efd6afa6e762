"""The ``sparkvision`` MLflow model flavour: a model directory as an MLflow model, with a pyfunc.

Shaped like MLflow's own flavours (``mlflow.onnx``, ``mlflow.pytorch``)::

    sparkvision.mlflow.save_model(model_dir, path)        # an MLflow model folder on local disk
    sparkvision.mlflow.log_model(model_dir, name="model", registered_model_name=...)   # into the active run
    sparkvision.mlflow.load_model("models:/NAME/1")       # the sparkvision model directory (a Path)
    mlflow.pyfunc.load_model("models:/NAME/1").predict(pandas_df)   # no Spark, no JVM
    mlflow.pyfunc.spark_udf(spark, "models:/NAME/1")(F.col("content"))

The MLflow model folder holds ``MLmodel`` (flavours ``sparkvision`` and
``python_function``, loader :func:`_load_pyfunc`), the environment files, and the model
directory itself under ``model/`` (everything but training state: ``checkpoints/`` and
``tensorboard/`` are left out). The pyfunc runs the directory's ``model.onnx`` through
:class:`~sparkvision.models.runner.ClassifierRunner`, the same decode, preprocessing and
ONNX Runtime path as batch prediction and the HTTP server; a ``spark_pipeline`` model
(``sparkvision fit``) carries that graph too (``sparkvision export`` checks it against
Spark). Classifier directories only: a detector, or a fit model without ``model.onnx``
(random forests, GBTs), is refused when saved.

``predict`` takes a pandas DataFrame with a column ``content`` (encoded image bytes) or
``path`` (a local path, ``file:`` URI or any URI pyarrow reads), or both (``content``
wins where it is not null), and returns one row per input row, in order:
``prediction`` (string), ``probability`` (list of float, the card's ``labels`` order) and
``error`` (null, or ``"<kind>: <detail>"`` as everywhere in sparkvision). A bad image
gives an error row, never an exception.

Nothing here imports mlflow until it is called; without it the error says which extra
to install.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparkvision import __version__

if TYPE_CHECKING:
    import pandas as pd

    from sparkvision.models.runner import ClassifierRunner

FLAVOR_NAME = "sparkvision"
#: Where the model directory sits inside the MLflow model folder.
MODEL_SUBPATH = "model"
#: Folders of a model directory that only training needs; not copied into the MLflow model.
TRAINING_STATE = ("checkpoints", "tensorboard")
INSTALL_HINT = "pip install 'sparkvision[mlflow]'"
PREDICTION_COLUMNS = ("prediction", "probability", "error")


class MlflowMissingError(RuntimeError):
    """MLflow is not installed (the ``mlflow`` extra)."""


def require_mlflow() -> Any:
    """The ``mlflow`` module, or an error that says how to install it."""
    try:
        import mlflow
    except ImportError as exc:
        raise MlflowMissingError(f"MLflow is not installed: {INSTALL_HINT} ({exc})") from None
    return mlflow


# ---------------------------------------------------------------- saving


def _check_model_dir(model_dir: Path) -> Any:
    """The card of a model directory the pyfunc can run; a clear error otherwise."""
    from sparkvision.models.model_dir import load_card, onnx_path

    card = load_card(model_dir)
    if card.kind == "detector":
        raise ValueError(f"{model_dir} is a detector; the sparkvision MLflow flavour takes classifiers")
    try:
        onnx_path(model_dir, card)
    except FileNotFoundError as exc:
        raise ValueError(f"{exc}: the pyfunc runs model.onnx (for a fit model: 'sparkvision export "
                         f"{model_dir}'; random forests and GBTs have none)") from None
    return card


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec(DataType.binary, "content", required=False),
                     ColSpec(DataType.string, "path", required=False)])
    outputs = Schema([ColSpec(DataType.string, "prediction"), ColSpec(Array(DataType.double), "probability"),
                      ColSpec(DataType.string, "error")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def get_default_pip_requirements() -> list[str]:
    """What the pyfunc imports: sparkvision's Spark-free core (ONNX Runtime, Pillow, NumPy, pandas)."""
    from mlflow.utils.requirements_utils import _get_pinned_requirement

    pinned = [_get_pinned_requirement(name) for name in ("onnxruntime", "onnx", "numpy", "pillow", "pandas")]
    return [f"sparkvision=={__version__}", *pinned]


def save_model(
    model_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    mlflow_model: Any = None,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: Sequence[str] | str | None = None,
    extra_pip_requirements: Sequence[str] | str | None = None,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """Write the sparkvision model directory ``model_dir`` as an MLflow model folder at ``path``.

    ``signature`` defaults to ``content: binary, path: string`` (both optional) in and
    ``prediction, probability, error`` out, which is what ``spark_udf`` reads its result
    type from.
    """
    require_mlflow()
    import yaml
    from mlflow import pyfunc
    from mlflow.models import Model
    from mlflow.models.model import MLMODEL_FILE_NAME
    from mlflow.models.utils import _save_example
    from mlflow.utils.environment import (
        _CONDA_ENV_FILE_NAME,
        _CONSTRAINTS_FILE_NAME,
        _PYTHON_ENV_FILE_NAME,
        _REQUIREMENTS_FILE_NAME,
        _process_pip_requirements,
        _PythonEnv,
    )
    from mlflow.utils.model_utils import _validate_and_prepare_target_save_path

    from sparkvision.models.model_dir import model_digest

    source = Path(model_dir).resolve()
    card = _check_model_dir(source)
    path = os.path.abspath(os.fspath(path))
    _validate_and_prepare_target_save_path(path)
    shutil.copytree(source, os.path.join(path, MODEL_SUBPATH), ignore=shutil.ignore_patterns(*TRAINING_STATE))

    mlflow_model = mlflow_model or Model()
    mlflow_model.signature = signature or _signature()
    if input_example is not None:
        _save_example(mlflow_model, input_example, path)
    if metadata is not None:
        mlflow_model.metadata = metadata
    pyfunc.add_to_model(mlflow_model, loader_module="sparkvision.mlflow", data=MODEL_SUBPATH,
                               conda_env=_CONDA_ENV_FILE_NAME, python_env=_PYTHON_ENV_FILE_NAME)
    mlflow_model.add_flavor(FLAVOR_NAME, sparkvision_version=__version__, data=MODEL_SUBPATH, kind=card.kind,
                            model_name=card.name, model_version=model_digest(source), labels=len(card.labels))
    mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))

    defaults = None if pip_requirements is not None else get_default_pip_requirements()
    conda_env, requirements, constraints = _process_pip_requirements(defaults, pip_requirements,
                                                                     extra_pip_requirements)
    with open(os.path.join(path, _CONDA_ENV_FILE_NAME), "w", encoding="utf-8") as handle:
        yaml.safe_dump(conda_env, stream=handle, default_flow_style=False)
    if constraints:
        Path(path, _CONSTRAINTS_FILE_NAME).write_text("\n".join(constraints), encoding="utf-8")
    Path(path, _REQUIREMENTS_FILE_NAME).write_text("\n".join(requirements), encoding="utf-8")
    _PythonEnv.current().to_yaml(os.path.join(path, _PYTHON_ENV_FILE_NAME))


def log_model(
    model_dir: str | os.PathLike[str],
    name: str = "model",
    registered_model_name: str | None = None,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: Sequence[str] | str | None = None,
    extra_pip_requirements: Sequence[str] | str | None = None,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Log ``model_dir`` to the active run (one is started if none is); returns MLflow's ``ModelInfo``.

    With ``registered_model_name``, a new version of that registered model is created too.
    """
    import sparkvision.mlflow as flavor

    require_mlflow()
    from mlflow.models import Model

    return Model.log(
        artifact_path=None, name=name, flavor=flavor, model_dir=str(Path(model_dir).resolve()),
        registered_model_name=registered_model_name, signature=signature, input_example=input_example,
        pip_requirements=pip_requirements, extra_pip_requirements=extra_pip_requirements, metadata=metadata,
        **kwargs,
    )


# ---------------------------------------------------------------- loading


def load_model(model_uri: str, dst_path: str | None = None) -> Path:
    """The sparkvision model directory of an MLflow model (downloaded to ``dst_path`` or a temporary folder).

    What every sparkvision API takes: ``sparkvision predict --model``, ``serve``,
    :func:`sparkvision.inference.predict.load_model`, :func:`sparkvision.sql.register`.
    """
    require_mlflow()
    from mlflow.tracking.artifact_utils import _download_artifact_from_uri
    from mlflow.utils.model_utils import _get_flavor_configuration

    local = _download_artifact_from_uri(artifact_uri=model_uri, output_path=dst_path)
    conf = _get_flavor_configuration(model_path=local, flavor_name=FLAVOR_NAME)
    return Path(local, conf["data"])


def _threads() -> int | None:
    """ONNX Runtime threads: Spark's cores per task inside a Spark task (``spark_udf``), else its default."""
    if os.environ.get("SPARKVISION_TASK_CPUS"):
        return int(os.environ["SPARKVISION_TASK_CPUS"])
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    context = TaskContext.get()
    return int(context.cpus()) if context is not None else None


class SparkvisionPyfunc:
    """What ``mlflow.pyfunc.load_model`` returns for the flavour (wrapped in MLflow's ``PyFuncModel``)."""

    def __init__(self, runner: ClassifierRunner) -> None:
        self.runner = runner

    def get_raw_model(self) -> ClassifierRunner:
        return self.runner

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """``prediction``, ``probability``, ``error`` for each row of ``model_input`` (see the module docstring)."""
        import pandas as pd

        images, errors = _images(model_input)
        rows = self.runner.predict_proba(images)
        predictions = rows.per_input(self.runner.top1_of(rows.values))
        probabilities = rows.per_input([[float(p) for p in row] for row in rows.values])
        errors = [read or model for read, model in zip(errors, rows.errors, strict=True)]
        return pd.DataFrame({"prediction": predictions, "probability": probabilities, "error": errors},
                            columns=list(PREDICTION_COLUMNS))


def _images(frame: Any) -> tuple[list[bytes | None], list[str | None]]:
    """Each row's encoded bytes (from ``content``, else read from ``path``), or its reading error."""
    import pandas as pd

    from sparkvision.config import IngestSettings
    from sparkvision.io.errors import ErrorKind, ImageError
    from sparkvision.storage import FileTooLargeError, read_bytes

    if isinstance(frame, pd.Series):
        frame = frame.to_frame("content" if frame.map(_is_bytes).any() else "path")
    if not isinstance(frame, pd.DataFrame) or not {"content", "path"} & set(frame.columns):
        got = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise ValueError(f"the sparkvision pyfunc takes a DataFrame with a 'content' (image bytes) or 'path' column; "
                         f"got {got}")
    n = len(frame)
    contents = list(frame["content"]) if "content" in frame.columns else [None] * n
    paths = list(frame["path"]) if "path" in frame.columns else [None] * n
    limit = IngestSettings().max_file_bytes
    images: list[bytes | None] = []
    errors: list[str | None] = []
    for content, path in zip(contents, paths, strict=True):
        data, error = None, None
        if _is_bytes(content):
            data = bytes(content)
        elif isinstance(path, str) and path:
            try:
                data = read_bytes(path, max_bytes=limit)
            except FileTooLargeError as exc:
                error = ImageError(ErrorKind.TOO_LARGE, str(exc)).message
            except OSError as exc:
                error = ImageError(ErrorKind.UNREADABLE, f"cannot read {path} ({exc.strerror or exc})").message
        else:
            error = ImageError(ErrorKind.UNREADABLE, "the row has neither content nor path").message
        images.append(data)
        errors.append(error)
    return images, errors


def _is_bytes(value: Any) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


def _load_pyfunc(path: str) -> SparkvisionPyfunc:
    """Called by ``mlflow.pyfunc.load_model`` with the flavour's ``data`` folder: the model directory."""
    from sparkvision.models.runner import ClassifierRunner

    return SparkvisionPyfunc(ClassifierRunner.from_model_dir(path, threads=_threads()))


__all__ = [
    "FLAVOR_NAME",
    "MlflowMissingError",
    "SparkvisionPyfunc",
    "get_default_pip_requirements",
    "load_model",
    "log_model",
    "require_mlflow",
    "save_model",
]
