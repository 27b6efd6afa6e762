"""``sparkvision``: one command, a subcommand per step of the workflow.

Each step lives in its own module under :mod:`sparkvision.cli`, exposing
``register(subparsers, parents)``; this file collects them and turns whatever a
command raises into one clear line on stderr and an exit code (:class:`ExitCode`),
with the traceback only under ``-v``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import textwrap

from sparkvision import __version__
from sparkvision.cli.common import (
    EXIT_CODE_MEANINGS,
    ExitCode,
    UsageError,
    configure_logging,
    configure_output,
    logging_options,
    spark_options,
)
from sparkvision.mlflow import tracking

#: Command modules, in the order the help lists them (the order data flows).
COMMAND_MODULES = [
    "sparkvision.cli.data",
    "sparkvision.cli.models",
    "sparkvision.cli.transfer",
    "sparkvision.cli.train",
    "sparkvision.cli.detect",
    "sparkvision.cli.sql",
    "sparkvision.cli.evaluate",
    "sparkvision.cli.drift",
    "sparkvision.cli.tiling",
    "sparkvision.cli.deploy",
    "sparkvision.cli.plan",
]

log = logging.getLogger("sparkvision")


def exit_code_table(width: int = 100) -> str:
    rows = [textwrap.fill(text, width, initial_indent=f"  {int(code):<4} ", subsequent_indent=" " * 7)
            for code, text in EXIT_CODE_MEANINGS.items()]
    return "exit codes:\n" + "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparkvision",
        description="Image recognition at scale on Apache Spark: ingest image collections, "
        "train and fine-tune CNNs, evaluate, predict in batch, tile huge images, and serve models.",
        epilog=textwrap.fill(
            "Every command that runs Spark takes --master and --conf; run 'sparkvision COMMAND --help' for "
            "details. On a terminal a command prints a short summary; with --json, or when stdout is a pipe or "
            "a file, the full result as JSON (logs and progress go to stderr).", 100) + "\n\n" + exit_code_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sparkvision {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = {"spark": spark_options(), "logging": logging_options()}
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers, parents)
    for name in tracking.TRACKED_COMMANDS:  # --mlflow: the run wraps the handler (see main)
        tracking.add_options(subparsers.choices[name])
    return parser


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def _java_root_cause(exc: BaseException) -> str:
    """The innermost Java exception behind a Py4JJavaError, as ``Class: message``."""
    try:
        java = exc.java_exception  # type: ignore[attr-defined]
        while java.getCause() is not None and java.getCause() != java:
            java = java.getCause()
        return _first_line(java.toString())
    except Exception:  # noqa: BLE001 - the JVM may be gone; the Python text still says something
        return _first_line(str(exc).split("\n: ", 1)[-1])


def _python_worker_error(text: str) -> str:
    """``SomeError: message``, the last such line of a Python worker's traceback."""
    found = [line.strip() for line in text.split("JVM stacktrace:")[0].splitlines()
             if re.match(r"\s*[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", line)]
    return found[-1] if found else _first_line(text)


def describe_error(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code and the one line a person reads for an exception a command raised."""
    from PIL import Image
    from py4j.protocol import Py4JJavaError
    from pyspark.errors.exceptions.base import PySparkException
    from pyspark.errors.exceptions.captured import PythonException

    from sparkvision.extras import missing_extra
    from sparkvision.io.errors import ImageError
    from sparkvision.models.model_dir import ModelCardError

    if isinstance(exc, UsageError):
        return ExitCode.USAGE, _message(exc)
    if (extra := missing_extra(exc)) is not None:  # a module of an extra not installed: which one to install
        return ExitCode.FAILED, str(extra)
    if isinstance(exc, FileNotFoundError | ModelCardError):
        return ExitCode.INPUT, _message(exc)
    if isinstance(exc, PythonException):  # a Python worker failed: its own last line says why
        return ExitCode.FAILED, f"Spark task failed: {_python_worker_error(str(exc))}"
    if isinstance(exc, PySparkException):  # AnalysisException and the other errors Spark raises in Python
        condition = getattr(exc, "getCondition", lambda: None)() or ""
        return ExitCode.INPUT if condition == "PATH_NOT_FOUND" else ExitCode.FAILED, f"Spark: {_message(exc)}"
    if isinstance(exc, Py4JJavaError):
        cause = _java_root_cause(exc)
        code = ExitCode.INPUT if cause.startswith("java.io.FileNotFoundException") else ExitCode.FAILED
        return code, f"Spark job failed: {cause}"
    if any(c.__name__ == "MlflowException" for c in type(exc).__mro__):  # --mlflow: a store it cannot use
        return ExitCode.FAILED, f"MLflow: {_message(exc)}"
    if isinstance(exc, OSError | ValueError | KeyError | RuntimeError | ImageError | Image.DecompressionBombError):
        return ExitCode.FAILED, _message(exc)
    return ExitCode.FAILED, f"{type(exc).__name__}: {_message(exc)} (a bug? -v shows the traceback)"


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return _first_line(str(exc)) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return ExitCode.USAGE
    configure_logging(args)
    configure_output(args)
    try:
        with tracking.tracked_command(args):
            return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        log.error("interrupted")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line and an exit code
        code, message = describe_error(exc)
        if code == ExitCode.USAGE:
            message = f"{message} (see 'sparkvision {args.command} --help')"
        log.error("%s", message, exc_info=exc if getattr(args, "verbose", False) else None)
        return code


if __name__ == "__main__":
    sys.exit(main())
