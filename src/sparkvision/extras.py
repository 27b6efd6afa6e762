"""Optional dependencies: which ``pip install 'sparkvision[EXTRA]'`` brings a missing module.

The core install (featurize, fit MLlib heads, predict, evaluate) needs no torch; training,
tiling of TIFF/DICOM slides, serving, MLflow, Hugging Face backbones and one demo dataset
come with extras. Code that needs one imports it through :func:`require`, and the CLI turns
any :class:`ModuleNotFoundError` of a module listed here into the same one line
(:func:`missing_extra`), so a command run without its extra says what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

#: Top-level module -> the extra that installs it.
EXTRAS = {
    "torch": "train",
    "efficientnet_lite_pytorch": "train",
    "tensorboard": "train",
    "tifffile": "tiling",
    "imagecodecs": "tiling",
    "pydicom": "dicom",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "prometheus_client": "serve",
    "mlflow": "mlflow",
    "sqlalchemy": "mlflow",
    "alembic": "mlflow",
    "transformers": "hf",
    "mlxtend": "demo",
}


class MissingExtra(ModuleNotFoundError):
    """A module of an optional extra is not installed; the message names the extra."""


def message(module: str, extra: str, what: str | None = None) -> str:
    """The one line: what needs which extra (or which module is missing), and the command installing it."""
    if what:
        return f"{what} needs the [{extra}] extra: pip install 'sparkvision[{extra}]'"
    return f"{module} is not installed (the [{extra}] extra): pip install 'sparkvision[{extra}]'"


def require(module: str, what: str | None = None, extra: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingExtra` naming the extra to install.

    ``what`` names the feature in the message ("training"); ``extra`` defaults to
    :data:`EXTRAS` of the module's top-level package.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        found = missing_extra(exc, what)
        if found is None and extra is not None and exc.name and module.startswith(exc.name.split(".")[0]):
            found = MissingExtra(message(module.split(".")[0], extra, what), name=exc.name)
        if found is None:
            raise
        raise found from exc


def missing_extra(exc: BaseException, what: str | None = None) -> MissingExtra | None:
    """The :class:`MissingExtra` for a ``ModuleNotFoundError`` of a module some extra installs, else None."""
    if isinstance(exc, MissingExtra):
        return exc
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    extra = EXTRAS.get(top)
    return MissingExtra(message(top, extra, what), name=exc.name) if extra else None


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


__all__ = ["EXTRAS", "MissingExtra", "available", "message", "missing_extra", "require"]
