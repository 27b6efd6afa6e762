"""``sparkvision``: one command, a subcommand per step of the workflow.

Each step lives in its own module under :mod:`sparkvision.cli`, exposing
``register(subparsers, parents)``; this file only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from sparkvision import __version__
from sparkvision.cli.common import configure_logging, logging_options, spark_options

#: Command modules, in the order the help lists them (the order data flows).
COMMAND_MODULES = [
    "sparkvision.cli.data",
    "sparkvision.cli.transfer",
    "sparkvision.cli.train",
    "sparkvision.cli.detect",
    "sparkvision.cli.evaluate",
    "sparkvision.cli.tiling",
    "sparkvision.cli.deploy",
]

log = logging.getLogger("sparkvision")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparkvision",
        description="Image recognition at scale on Apache Spark: ingest image collections, "
        "train and fine-tune CNNs, evaluate, predict in batch, tile huge images, and serve models.",
        epilog="Every command that runs Spark takes --master and --conf; run 'sparkvision COMMAND --help' for details.",
    )
    parser.add_argument("--version", action="version", version=f"sparkvision {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = {"spark": spark_options(), "logging": logging_options()}
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers, parents)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    configure_logging(args)
    try:
        return int(args.handler(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
