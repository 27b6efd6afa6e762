"""What every subcommand shares: Spark options, logging, and writing results to stdout."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
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
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark configuration, repeatable (e.g. --conf spark.executor.memory=8g)",
    )
    group.add_argument("--driver-memory", default=None, help="driver JVM heap (default 4g)")
    return parent


def logging_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    parent.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
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
    """--master (else $SPARKVISION_MASTER), --conf and --driver-memory as SparkSettings."""
    settings = SparkSettings()
    overrides: dict[str, Any] = {"conf": parse_conf_pairs(args.conf)}
    if args.master:
        overrides["master"] = args.master
    if args.driver_memory:
        overrides["driver_memory"] = args.driver_memory
    return replace(settings, **overrides)


def spark_from_args(args: argparse.Namespace) -> SparkSession:
    return get_spark(settings_from_args(args))


def emit(result: Any) -> None:
    """A command's result: JSON on stdout (logs and progress go to stderr)."""
    sys.stdout.write(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()
