"""``ingest`` and ``info``: image collections into sparkvision datasets, and what they hold."""

from __future__ import annotations

import argparse
import logging
import os

from sparkvision.cli.common import Summary, emit, spark_from_args
from sparkvision.config import DecodeSettings, IngestSettings
from sparkvision.io import compute_stats, load_images, read_dataset, write_dataset
from sparkvision.progress import spark_progress
from sparkvision.storage import OutputExistsError, local_path_or_none

log = logging.getLogger(__name__)


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """Options for reading SRC, shared by every command that reads images."""
    group = parser.add_argument_group("source")
    group.add_argument(
        "--source-kind",
        choices=["auto", "builtin", "dataset", "folder", "binaryFile", "voc", "coco"],
        default="auto",
        help="how to read SRC (default: built-in name, else dataset, else VOC folder or ImageSets list, "
        "else COCO .json, else folder; URIs use binaryFile)",
    )
    group.add_argument("--classes", default=None,
                       help="VOC/COCO: comma-separated object classes, in order; objects of other classes make "
                       "their image an unknown_class error (default: every class found, sorted)")
    group.add_argument("--images", default=None, help="COCO: the folder holding the images (default: beside the "
                       "JSON, its images/ folder, or one folder up)")
    group.add_argument("--glob", default=None, help="only files whose name matches this glob (e.g. '*_2024*.jpg')")
    group.add_argument(
        "--extensions",
        default=None,
        help="comma-separated file extensions to read (default: common image formats)",
    )
    group.add_argument("--no-recursive", action="store_true", help="do not descend below class folders")
    group.add_argument("--max-pixels", type=int, default=None,
                       help="refuse images with more pixels than this (decompression bombs; default 89,478,485 "
                       "or $SPARKVISION_MAX_PIXELS)")


def ingest_settings(args: argparse.Namespace) -> IngestSettings:
    """--extensions and --no-recursive (where the command has it) as IngestSettings."""
    recursive = not getattr(args, "no_recursive", False)
    if args.extensions:
        exts = tuple("." + e.strip().lower().lstrip(".") for e in args.extensions.split(",") if e.strip())
        return IngestSettings(extensions=exts, recursive=recursive)
    return IngestSettings(recursive=recursive)


def decode_settings(args: argparse.Namespace) -> DecodeSettings:
    return DecodeSettings(max_pixels=args.max_pixels) if args.max_pixels else DecodeSettings()


def object_classes(args: argparse.Namespace) -> list[str] | None:
    classes = getattr(args, "classes", None)
    return None if classes is None else [c.strip() for c in classes.split(",") if c.strip()]


def read_source(spark, args: argparse.Namespace, src: str, probe: str = "full"):
    return load_images(
        spark, src, kind=args.source_kind, ingest=ingest_settings(args), decode=decode_settings(args),
        glob=args.glob, probe=probe, classes=object_classes(args), images=getattr(args, "images", None),
    )


def _ingest(args: argparse.Namespace) -> int:
    local = local_path_or_none(args.out)
    if local is not None and os.path.lexists(local) and not args.overwrite:
        # Refuse before starting Spark; write_dataset checks again for any URI.
        raise OutputExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    spark = spark_from_args(args)
    frame = read_source(spark, args, args.src, probe="full")
    with spark_progress(spark, "ingest"):
        manifest = write_dataset(spark, frame, args.out, overwrite=args.overwrite, source=args.src,
                                 classes=object_classes(args))
    with spark_progress(spark, "statistics"):
        stats = compute_stats(read_dataset(spark, args.out))
    log.info("ingested %d rows (%d ok, %d with errors) into %s", manifest.rows, manifest.ok, manifest.errors, args.out)
    detection = {"task": "detect", "objects": stats.objects, "clipped_boxes": stats.clipped_boxes,
                 "class_order": manifest.classes} if manifest.task == "detect" else {}
    emit({"out": args.out, "rows": stats.rows, "ok": stats.ok, "errors": stats.errors,
          "classes": stats.classes, "error_kinds": stats.error_kinds, "error_examples": stats.error_examples,
          **detection}, _ingest_summary)
    return 0


def _ingest_summary(r: dict) -> Summary:
    return Summary(
        f"ingested {r['rows']:,} files into {r['out']}: {r['ok']:,} usable, {r['errors']:,} with errors",
        [("classes", f"{len(r['classes'])}: {_counts(r['classes'])}"), ("errors", r["error_kinds"] or None)],
        [f"sparkvision info {r['out']}", f"sparkvision fit --train {r['out']} --out MODEL_DIR"],
    )


def _counts(counts: dict, most: int = 8) -> str:
    shown = ", ".join(f"{k} {v:,}" for k, v in list(counts.items())[:most])
    return shown + (f", ... ({len(counts) - most} more)" if len(counts) > most else "")


def _info(args: argparse.Namespace) -> int:
    spark = spark_from_args(args)
    frame = read_source(spark, args, args.src, probe="full")
    with spark_progress(spark, "info"):
        stats = compute_stats(frame)
    emit({"source": args.src, **stats.to_dict(), "num_classes": len(stats.classes)}, _info_summary)
    return 0


def _info_summary(r: dict) -> Summary:
    return Summary(
        f"{r['source']}: {r['rows']:,} files, {r['ok']:,} usable, {r['errors']:,} with errors",
        [("classes", f"{r['num_classes']}: {_counts(r['classes'])}"), ("errors", r.get("error_kinds") or None),
         ("modes", r.get("modes")), ("formats", r.get("formats")), ("sizes", r.get("sizes"))],
        [f"sparkvision fit --train {r['source']} --out MODEL_DIR"],
    )


def register(subparsers: argparse._SubParsersAction, parents: dict[str, argparse.ArgumentParser]) -> None:
    common = [parents["spark"], parents["logging"]]
    ingest = subparsers.add_parser(
        "ingest",
        parents=common,
        help="read images (folder, URI, built-in dataset) into a Parquet dataset",
        description="Read SRC, decode every file once to check it, and write a sparkvision Parquet dataset: "
        "one row per file, bad files kept with their error (empty_file, unreadable, too_large, not_an_image, "
        "truncated, corrupt, too_many_pixels). Prints JSON with counts per class and per error kind. "
        "Box-labelled sets (a Pascal VOC folder with JPEGImages/ and Annotations/, a list "
        "DIR/ImageSets/Main/<split>.txt, a COCO instances .json) add an objects column; their counts are "
        "boxes per class, and bad annotations are rows with missing_image, missing_annotation, missing_id, "
        "bad_annotation, empty_box, box_outside or unknown_class. "
        "Example: sparkvision ingest photos/ --out /tmp/d",
    )
    ingest.add_argument("src", help="folder (class = sub-folder), Hadoop URI, dataset, VOC folder or ImageSets "
                        "list, COCO .json, or built-in name "
                        "(fashion-mnist, fashion-mnist:train, fashion-mnist:test, mnist-5k, digits)")
    ingest.add_argument("--out", required=True, help="output dataset directory (any Hadoop URI)")
    ingest.add_argument("--overwrite", action="store_true", help="replace an existing output (atomically)")
    add_source_options(ingest)
    ingest.set_defaults(handler=_ingest)

    info = subparsers.add_parser(
        "info",
        parents=common,
        help="classes, counts, size/mode histograms and errors of SRC",
        description="Describe SRC: rows, usable rows per class, image modes, formats, sizes, and errors by kind.",
    )
    info.add_argument("src", help="folder, Hadoop URI, dataset, VOC folder or ImageSets list, COCO .json, "
                      "or built-in name")
    add_source_options(info)
    info.set_defaults(handler=_info)
