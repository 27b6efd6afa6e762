"""``sql``: a Spark SQL query over image sources, with model directories as functions (:mod:`sparkvision.sql`)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from sparkvision.cli.common import Summary, UsageError, emit, fmt, spark_from_args
from sparkvision.cli.data import add_source_options, read_source

log = logging.getLogger(__name__)

DEFAULT_VIEW = "images"


def _pairs(values: list[str], option: str, default_name: str | None) -> list[tuple[str, str]]:
    """``NAME=VALUE`` options (``VALUE`` alone takes ``default_name``, when there is one)."""
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if sep and name and "/" not in name and ":" not in name:
            pairs.append((name, rest))
        elif default_name is not None:
            pairs.append((default_name, value))
        else:
            raise UsageError(f"{option} takes NAME=VALUE, got {value!r}")
    return pairs


def _cell(value: Any) -> Any:
    """A value as JSON shows it: bytes by their length, rows and lists all the way down."""
    if isinstance(value, bytes | bytearray):
        return f"<{len(value):,} bytes>"
    if isinstance(value, dict):
        return {k: _cell(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cell(v) for v in value]
    return value


def _sql(args: argparse.Namespace) -> int:
    from sparkvision.sql import register

    functions = _pairs(args.register, "--register", None)
    inputs = _pairs(args.input, "--input", DEFAULT_VIEW)
    if args.limit < 0:
        raise UsageError(f"--limit must be >= 0, got {args.limit}")
    spark = spark_from_args(args)
    registered = [register(spark, model_dir, name).to_dict() for name, model_dir in functions]
    for view, src in inputs:
        read_source(spark, args, src, probe="header").createOrReplaceTempView(view)
    frame = spark.sql(args.query)
    result: dict[str, Any] = {"query": args.query, "functions": registered, "views": dict(inputs),
                              "columns": frame.columns}
    if args.out:
        mode = "overwrite" if args.overwrite else "error"
        frame.write.mode(mode).parquet(args.out)
        written = spark.read.parquet(args.out)
        result.update(out=args.out, rows=written.count(), shown=[_cell(r.asDict(recursive=True))
                                                                for r in written.limit(args.limit).collect()])
    else:
        result["shown"] = [_cell(r.asDict(recursive=True)) for r in frame.limit(args.limit).collect()]
    emit(result, _sql_summary)
    return 0


def _sql_summary(r: dict[str, Any]) -> Summary:
    facts: list[tuple[str, Any]] = [(f["predict"], f"{f['model_dir']} ({len(f['labels'])} classes"
                                     + (f"; {f['features']} too)" if f["features"] else ")"))
                                    for f in r["functions"]]
    facts += [(f"row {i + 1}", ", ".join(f"{k}={fmt(v)}" for k, v in row.items())) for i, row in enumerate(r["shown"])]
    written = f"wrote {r['rows']:,} rows to {r['out']}" if r.get("out") else f"{len(r['shown'])} rows shown"
    return Summary(f"{written}: {', '.join(r['columns'])}", facts)


def register(subparsers: argparse._SubParsersAction, parents: dict[str, argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sql",
        parents=[parents["spark"], parents["logging"]],
        help="a Spark SQL query over image sources, with model directories as SQL functions",
        description="Register each --register NAME=MODEL_DIR as the SQL functions NAME(content) (struct of "
        "prediction, probability, error) and NAME_features(content) (array<float>), read each --input VIEW=SRC "
        "as a temporary view (path, label, content, error, ...), and run QUERY. Prints the first --limit rows "
        "as JSON (binary values by their length), or with --out writes every row as Parquet.",
        epilog="example: sparkvision sql --register imagenette=models/imagenette --input images=photos/ "
        "\"SELECT path, imagenette(content).prediction AS prediction FROM images\"",
    )
    parser.add_argument("query", metavar="QUERY", help="a Spark SQL query")
    parser.add_argument("--register", action="append", default=[], metavar="NAME=MODEL_DIR",
                        help="a classifier model directory as the functions NAME and NAME_features (repeatable)")
    parser.add_argument("--input", action="append", default=[], metavar="VIEW=SRC",
                        help=f"an image source as a temporary view (repeatable; a bare SRC is view {DEFAULT_VIEW!r})")
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="rows to print (default 20)")
    parser.add_argument("--out", default=None, metavar="PARQUET", help="write every row of the result here")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_source_options(parser)
    parser.set_defaults(handler=_sql)
