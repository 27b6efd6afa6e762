"""What every subcommand shares: Spark options, logging, exit codes, and writing results to stdout."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

from pyspark.sql import SparkSession

from sparkvision.config import SparkSettings
from sparkvision.session import get_spark, parse_conf_pairs


def spark_options() -> argparse.ArgumentParser:
    """Options accepted by every command that runs Spark."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("Spark")
    group.add_argument(
        "--master",
        default=None,
        help="Spark master URL (default: $SPARKVISION_MASTER or local[*], Spark embedded in this process)",
    )
    group.add_argument(
        "--remote",
        default=None,
        metavar="sc://HOST:PORT",
        help="run over Spark Connect on this server instead of a master (default: $SPARK_REMOTE)",
    )
    group.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark configuration, repeatable (e.g. --conf spark.executor.memory=8g)",
    )
    group.add_argument("--driver-memory", default=None, help="driver JVM heap (default 4g)")
    return parent


def logging_options() -> argparse.ArgumentParser:
    """Options of every command: how much goes to stderr, and the shape of stdout."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", help="log debug detail; tracebacks of errors")
    parent.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parent.add_argument("--json", action="store_true",
                        help="print the full result as JSON even on a terminal (always so when stdout is "
                        "a pipe or a file)")
    return parent


def configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if getattr(args, "verbose", False) else (
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    )
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    for noisy in ("py4j", "matplotlib", "PIL", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def settings_from_args(args: argparse.Namespace) -> SparkSettings:
    """--master (else $SPARKVISION_MASTER), --remote (else $SPARK_REMOTE), --conf and --driver-memory as SparkSettings."""
    settings = SparkSettings()
    overrides: dict[str, Any] = {"conf": parse_conf_pairs(args.conf)}
    if args.master:
        overrides["master"] = args.master
    if getattr(args, "remote", None):
        overrides["remote"] = args.remote
    if args.driver_memory:
        overrides["driver_memory"] = args.driver_memory
    return replace(settings, **overrides)


def given(settings: Any, **options: Any) -> Any:
    """``settings`` with the options the user gave: an option left at ``None`` keeps the settings' default."""
    return replace(settings, **{name: value for name, value in options.items() if value is not None})


def spark_from_args(args: argparse.Namespace) -> SparkSession:
    return get_spark(settings_from_args(args))


class ExitCode(IntEnum):
    """What ``sparkvision``'s exit status means (the table in the README and ``--help``)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    REFUSED = 3
    INPUT = 4
    DRIFT = 5
    INTERRUPTED = 130


EXIT_CODE_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the command failed: a Spark job or training failed, an output exists (without "
    "--overwrite) or cannot be written, or the input holds values the command cannot use",
    ExitCode.USAGE: "usage error: an unknown, missing or conflicting option",
    ExitCode.REFUSED: "optimize refused the result: accuracy dropped more than --max-accuracy-drop "
    "(nothing written unless --force)",
    ExitCode.INPUT: "an input is missing or unreadable: a source, dataset, predictions or model directory "
    "that does not exist, or a model card that is not valid",
    ExitCode.DRIFT: "drift found drift: a signal passed its threshold (the report is printed as usual)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class UsageError(ValueError):
    """Options that parse one by one but not together (exit code 2, like argparse's own errors)."""


@dataclass
class Summary:
    """What a person at a terminal reads instead of the JSON: a headline, a few facts, what to run next."""

    headline: str
    facts: list[tuple[str, Any]] = field(default_factory=list)
    next: list[str] = field(default_factory=list)

    def render(self) -> str:
        width = max((len(name) for name, _ in self.facts), default=0)
        lines = [self.headline]
        lines += [f"  {name.ljust(width)}  {fmt(value)}" for name, value in self.facts if value is not None]
        if self.next:
            lines += ["next:", *(f"  {command}" for command in self.next)]
        lines.append("(--json prints the full result)")
        return "\n".join(lines) + "\n"


def fmt(value: Any) -> str:
    """A number or short structure the way a summary shows it."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value) or "-"
    return str(value)


#: Set once per command by :func:`configure_output`: JSON on stdout, or a summary.
_json_output = True


def configure_output(args: argparse.Namespace) -> None:
    """JSON for scripts (``--json``, or stdout is not a terminal), a summary for people."""
    global _json_output
    _json_output = bool(getattr(args, "json", False)) or not sys.stdout.isatty()


def emit(result: Any, summary: Callable[[Any], Summary] | None = None) -> None:
    """A command's result on stdout (logs and progress go to stderr).

    JSON, exactly as scripts read it, unless stdout is a terminal and the command gave a
    ``summary``: then the few lines a person needs (key numbers, outputs, next command).
    Under ``--mlflow`` the result is logged to the command's run first, and gains its id.
    """
    from sparkvision.mlflow.tracking import record

    run = record(result)
    if run is not None:
        result = {**result, "mlflow": run}
        if summary is not None:
            summary = _with_mlflow_fact(summary, run)
    if _json_output or summary is None:
        text = json.dumps(result, indent=2, sort_keys=False, default=str) + "\n"
    else:
        text = summary(result).render()
    sys.stdout.write(text)
    sys.stdout.flush()


def _with_mlflow_fact(summary: Callable[[Any], Summary], run: dict[str, Any]) -> Callable[[Any], Summary]:
    def with_fact(result: Any) -> Summary:
        shown = summary(result)
        registered = run.get("registered_model")
        model = (f", model models:/{registered['name']}/{registered['version']}" if registered
                 else f", model {run['model_uri']}" if run.get("model_uri") else "")
        return replace(shown, facts=[*shown.facts, ("MLflow run", f"{run['run_id']} ({run['tracking_uri']}{model})")])
    return with_fact


def add_int8_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--int8`` and ``--int8-max-drop`` (fit, train, predict): ``what`` says what --int8 does there."""
    from sparkvision.config import TransferSettings

    parser.add_argument("--int8", action="store_true", help=what)
    parser.add_argument("--int8-max-drop", type=float, default=None, metavar="POINTS",
                        help=f"accuracy points int8 may cost (default {TransferSettings.int8_max_drop}); without "
                        "labels, top-1 agreement with fp32 must be at least 1 - POINTS/100")


def int8_facts(int8: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The int8 guard's verdict, for fit's, train's and predict's summaries."""
    if not int8:
        return []
    from sparkvision.deploy.int8 import Int8Decision

    return [("precision", Int8Decision(**int8).summary())]


def predictions_summary(r: dict[str, Any]) -> Summary:
    """``predict`` and ``detect``: where the predictions went, what they hold, how to judge them."""
    boxes = f"{r['boxes']:,}: {fmt(r.get('boxes_per_class'))}" if r.get("boxes") is not None else None
    return Summary(
        f"predicted {r['rows']:,} rows into {r['out']}: {r['predicted']:,} predicted, {r['errors']:,} with errors",
        [("model", f"{r['model']} ({r['kind']})"), ("predicted classes", r["predicted_classes"] or None),
         ("boxes", boxes), ("errors", r["error_kinds"] or None), *int8_facts(r.get("int8"))],
        [f"sparkvision evaluate --predictions {r['out']} --out REPORT_DIR"] if boxes is None else [],
    )
