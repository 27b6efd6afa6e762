"""``tile`` and ``heatmap``: huge images into overlapping tiles, and tile predictions back onto them."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict

from sparkvision.cli.common import Summary, UsageError, emit, spark_from_args
from sparkvision.cli.detect import add_detection_options
from sparkvision.config import HeatmapSettings, TilingSettings
from sparkvision.progress import spark_progress

log = logging.getLogger(__name__)


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels are comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 0:
        raise argparse.ArgumentTypeError(f"levels must be >= 0, got {text!r}")
    return levels


def _window(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"window is CENTER,WIDTH (e.g. 40,400 for CT soft tissue), got {text!r}")
    return float(parts[0]), float(parts[1])


def add_tiling_options(parser: argparse.ArgumentParser) -> None:
    defaults = TilingSettings()
    group = parser.add_argument_group("tiling")
    group.add_argument("--size", type=int, default=defaults.size, help="tile side in pixels (default %(default)s)")
    group.add_argument("--overlap", type=float, default=defaults.overlap,
                       help="fraction of a tile shared with its neighbours, in [0, 1) (default %(default)s)")
    group.add_argument("--levels", type=_levels, default=defaults.levels,
                       help="pyramid levels to tile, comma-separated: level L is the image averaged over "
                       "2**L x 2**L blocks (default 0, full resolution)")
    group.add_argument("--edge", choices=["shift", "pad"], default=defaults.edge,
                       help="edge rule: shift the last tile of a row/column inward so tiles stay inside the image, "
                       "or pad past the edge (default %(default)s)")
    group.add_argument("--skip-background", type=float, nargs="?", const=4.0, default=None, metavar="STD",
                       help="count tiles whose pixel standard deviation (0-255) is below STD (default 4.0) as "
                       "background: kept as rows without bytes, reported, never classified")
    group.add_argument("--tile-format", choices=["PNG", "JPEG"], default=defaults.tile_format,
                       help="tile encoding (PNG keeps 16-bit grey)")
    group.add_argument("--window", type=_window, default=None, metavar="CENTER,WIDTH",
                       help="map 16-bit, float and DICOM values to 8 bits with this linear window "
                       "(DICOM default: the file's window)")
    group.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                       help="refuse pages with more pixels than this (decompression-bomb guard; default %(default)s)")
    group.add_argument("--rows-per-unit", type=int, default=defaults.rows_per_unit,
                       help="tile rows per Spark work unit of a random-access scene (default %(default)s)")
    group.add_argument("--partitions", type=int, default=None, help="Spark partitions of the work (default 2 x cores)")
    group.add_argument("--glob", default=None, help="only files whose name matches this glob")


def tiling_settings(args: argparse.Namespace) -> TilingSettings:
    return TilingSettings(
        size=args.size, overlap=args.overlap, levels=args.levels, edge=args.edge,
        background_std=args.skip_background, tile_format=args.tile_format, window=args.window,
        max_pixels=args.max_pixels, rows_per_unit=args.rows_per_unit, partitions=args.partitions,
    )


def _tile(args: argparse.Namespace) -> int:
    from sparkvision.tiling.tiles import list_sources, tile, write_tiles

    if args.model is not None:
        return _tile_detect(args)
    if args.screen is not None:
        raise UsageError("--screen picks the tiles a detector runs on: give the detector with --model")
    settings = tiling_settings(args)
    spark = spark_from_args(args)
    sources = list_sources(spark, args.src, glob=args.glob)
    with spark_progress(spark, "tile"):
        manifest = write_tiles(spark, tile(sources, settings), args.out, overwrite=args.overwrite,
                               source=args.src, settings=settings)
    log.info("%d sources -> %d tiles (%d kept, %d background, %d tile errors, %d source errors) in %s",
             manifest.sources, manifest.tiles, manifest.kept, manifest.background, manifest.tile_errors,
             manifest.source_errors, args.out)
    emit({"out": args.out, **{k: v for k, v in manifest.to_dict().items() if k != "settings"}}, _tile_summary)
    return 0


def _tile_summary(r: dict) -> Summary:
    return Summary(
        f"{r['sources']:,} sources cut into {r['tiles']:,} tiles in {r['out']}",
        [("kept", r["kept"]), ("background", r["background"]), ("tile errors", r["tile_errors"]),
         ("source errors", r["source_errors"]), ("per level", {k: v.get("tiles") for k, v in r["per_level"].items()}
                                                 if r.get("per_level") else None)],
        [f"sparkvision heatmap --tiles {r['out']} --model MODEL_DIR --out RESULTS"],
    )


def _tile_detect(args: argparse.Namespace) -> int:
    """``tile --model DETECTOR``: boxes per image in global pixels, optionally behind a screen."""
    import time

    from sparkvision.cli.detect import detection_settings
    from sparkvision.tiling.detect import (
        ScreenSettings,
        check_models,
        detect_large_images,
        write_tile_detections,
    )
    from sparkvision.tiling.merge import MergeSettings
    from sparkvision.tiling.tiles import list_sources

    settings = tiling_settings(args)
    decode = detection_settings(args)  # bad thresholds and models stop here, before Spark starts
    merge = MergeSettings(iou_threshold=decode.iou_threshold, ios_threshold=args.merge_ios)
    labels = tuple(name.strip() for value in args.screen_label or [] for name in value.split(",") if name.strip())
    screen = ScreenSettings(threshold=args.screen_threshold, labels=labels or None)
    check_models(args.model, args.screen, screen)
    spark = spark_from_args(args)
    started = time.perf_counter()
    sources = list_sources(spark, args.src, glob=args.glob)
    images = detect_large_images(sources, args.model, settings, decode, merge, args.screen, screen,
                                 batch_size=args.batch_size)
    summary = write_tile_detections(
        spark, images, sources, args.out, args.model, overwrite=args.overwrite,
        extra={"model": args.model, "screen": args.screen,
               "settings": {"tiling": asdict(settings), "decode": asdict(decode), "merge": asdict(merge),
                            "screen": asdict(screen) if args.screen else None}},
    )
    summary["seconds"] = time.perf_counter() - started
    log.info("%d images, %d boxes from %d tiles (%d detected, %d screened out, %d background, %d errors) in %s",
             summary["images"], summary["boxes"], summary["tiles"], summary["detected"], summary["screened_out"],
             summary["background"], summary["tile_errors"], args.out)
    emit(summary, _tile_detect_summary)
    return 0


def _tile_detect_summary(r: dict) -> Summary:
    return Summary(
        f"{r['images']:,} images, {r['boxes']:,} boxes from {r['tiles']:,} tiles in {r['out']}",
        [("boxes per class", r["boxes_per_class"] or None), ("tiles detected", r["detected"]),
         ("screened out", r["screened_out"] if r.get("screen") else None),
         ("detector seconds saved", round(r["net_seconds_saved"], 1) if r.get("screen") else None),
         ("background", r["background"]), ("tile errors", r["tile_errors"]), ("errors", r["error_kinds"] or None)],
        [f"sparkvision evaluate --task detect --predictions {r['out']} --truth SRC --out REPORT_DIR"],
    )


def _heatmap(args: argparse.Namespace) -> int:
    from sparkvision.models.model_dir import load_card
    from sparkvision.tiling.aggregate import aggregate_tiles, write_results
    from sparkvision.tiling.classify import classify_tiles
    from sparkvision.tiling.tiles import list_sources, read_tiles, tile

    if (args.tiles is None) == (args.src is None):
        raise UsageError("give either SRC (images to tile now) or --tiles DATASET (written by 'sparkvision tile')")
    heat = HeatmapSettings(
        method=args.method, background_class=args.background_class, threshold=args.threshold, cell=args.cell,
        level=args.level, min_cells=args.min_cells, max_classes=args.max_classes,
        overlay_max_side=args.overlay_max_side, alpha=args.alpha,
    )
    spark = spark_from_args(args)
    card = load_card(args.model)
    if heat.background_class is not None and heat.background_class not in card.labels:
        raise UsageError(f"--background-class {heat.background_class!r} is not one of the model's labels {card.labels}")
    if args.tiles is not None:
        # Spark's vectorized Parquet reader fills 4096 rows per batch: with tile bytes that
        # is hundreds of MB a task; a few hundred rows keep each batch small.
        spark.conf.set("spark.sql.parquet.columnarReaderBatchSize", "256")
        tiles = read_tiles(spark, args.tiles)
    else:
        tiles = tile(list_sources(spark, args.src, glob=args.glob), tiling_settings(args))
    scored = classify_tiles(tiles, args.model, batch_size=args.batch_size)
    if args.keep_tile_predictions:
        scored = scored.cache()
    images = aggregate_tiles(scored, card.labels, heat, render=not args.no_overlays)
    with spark_progress(spark, "heatmap"):
        summary = write_results(
            spark, images, args.out, overwrite=args.overwrite,
            extra={"model": args.model, "labels": list(card.labels), "settings": asdict(heat)},
            tile_predictions=scored if args.keep_tile_predictions else None,
        )
    log.info("%d images, %d boxes, %d heat maps in %s", summary["images"], summary["boxes"], summary["heatmaps"],
             args.out)
    emit(summary, _heatmap_summary)
    return 0


def _heatmap_summary(r: dict) -> Summary:
    return Summary(
        f"{r['images']:,} images, {r['boxes']:,} boxes, {r['heatmaps']:,} heat maps in {r['out']}",
        [("tiles", f"{r['tiles']:,} ({r['scored']:,} scored, {r['background']:,} background, "
                   f"{r['tile_errors']:,} errors)"),
         ("images with errors", r["images_with_errors"]), ("image labels", r["predictions"] or None),
         ("boxes", f"{r['out']}/boxes.json"), ("heat maps", f"{r['out']}/heatmaps/")],
    )


def register(subparsers: argparse._SubParsersAction, parents: dict[str, argparse.ArgumentParser]) -> None:
    common = [parents["spark"], parents["logging"]]
    tile_cmd = subparsers.add_parser(
        "tile",
        parents=common,
        help="cut (huge) images into overlapping tiles with global coordinates; or detect objects on them",
        description="Cut every image of SRC into overlapping SIZE x SIZE tiles (optionally at several pyramid "
        "levels) and write them as a Parquet tile dataset: one row per tile with its source, page, level and "
        "x, y, w, h in full-resolution pixels. Tiled/striped TIFF is read region by region, PNG streamed, "
        "DICOM windowed; a source that cannot be read is one error row. Prints the counts. With --model "
        "DETECTOR, runs the detector on the tiles (behind an optional --screen classifier) and writes boxes "
        "per image in global pixels instead.",
    )
    tile_cmd.add_argument("src", help="an image file, a folder, a Hadoop URI, a sparkvision dataset or a built-in name")
    tile_cmd.add_argument("--out", required=True, help="output tile dataset directory")
    tile_cmd.add_argument("--overwrite", action="store_true", help="replace an existing output (atomically)")
    group = tile_cmd.add_argument_group(
        "detection on tiles",
        "With --model DETECTOR the output is not tiles but one Parquet row per image: path, label, boxes "
        "(label, score, xmin, ymin, xmax, ymax in full-resolution pixels), error, and tile counts. Boxes of "
        "one object seen by several tiles are merged (global per-class NMS, and fragments cut by a tile edge "
        "joined to the whole box); keep --overlap at least the largest object's size so each object is "
        "whole in some tile.",
    )
    group.add_argument("--model", default=None, metavar="DETECTOR",
                       help="a detector model directory: run it on every tile and write boxes per image")
    group.add_argument("--screen", default=None, metavar="CLASSIFIER",
                       help="a cheap classifier model directory run on every tile first; the detector only "
                       "runs on tiles that pass")
    group.add_argument("--screen-threshold", type=float, default=0.5, metavar="T",
                       help="a tile passes when the screen's probability of the interesting labels (summed) is "
                       "at least T (default %(default)s; lower it to miss fewer objects)")
    group.add_argument("--screen-label", action="append", default=None, metavar="LABEL",
                       help="a screen label that means 'look here' (repeatable, or comma-separated; default: "
                       "every label except 'background')")
    group.add_argument("--merge-ios", type=float, default=0.6, metavar="F",
                       help="a box cut by a tile edge is part of a same-class box covering more than F of it "
                       "(intersection over the smaller box; default %(default)s)")
    group.add_argument("--batch-size", type=int, default=16, metavar="N", help="tiles per model call")
    add_detection_options(tile_cmd)
    add_tiling_options(tile_cmd)
    tile_cmd.set_defaults(handler=_tile)

    heat_cmd = subparsers.add_parser(
        "heatmap",
        parents=common,
        help="classify tiles with a model; write per-image labels, heat maps and boxes",
        description="Classify tiles (--tiles DATASET from 'sparkvision tile', or SRC tiled on the fly) with a "
        "sparkvision model directory, then put the predictions back on each image: a label per image "
        "(--method), a heat map per class where overlapping tiles are averaged, blended over a downscaled "
        "original (PNG), and boxes of the regions above --threshold in full-resolution pixels "
        "(boxes.parquet, boxes.json). Per-image results follow the predictions schema (images/).",
    )
    heat_cmd.add_argument("src", nargs="?", default=None, help="images to tile now (instead of --tiles)")
    heat_cmd.add_argument("--model", required=True, help="sparkvision model directory (kind onnx or spark_pipeline)")
    heat_cmd.add_argument("--tiles", default=None, help="tile dataset written by 'sparkvision tile'")
    heat_cmd.add_argument("--out", required=True, help="output directory (local): images/, boxes.*, heatmaps/, summary.json")
    heat_cmd.add_argument("--overwrite", action="store_true", help="replace an existing output (atomically)")
    defaults = HeatmapSettings()
    group = heat_cmd.add_argument_group("heat map")
    group.add_argument("--method", choices=["max", "mean", "vote"], default=defaults.method,
                       help="per-image label from tile probabilities (default %(default)s)")
    group.add_argument("--background-class", default=None,
                       help="the model's 'nothing here' class: no heat map or boxes for it, and the image label "
                       "only when no other class reaches --threshold")
    group.add_argument("--threshold", type=float, default=defaults.threshold,
                       help="heat value at which cells form boxes (default %(default)s)")
    group.add_argument("--cell", type=int, default=None, help="heat-map cell side in full-resolution pixels "
                       "(default: a quarter of a tile's footprint)")
    group.add_argument("--level", type=int, default=None, help="pyramid level whose tiles make the heat map "
                       "(default: the finest present)")
    group.add_argument("--min-cells", type=int, default=defaults.min_cells, help="drop regions smaller than this")
    group.add_argument("--max-classes", type=int, default=defaults.max_classes,
                       help="heat maps for at most this many classes per image (default %(default)s)")
    group.add_argument("--overlay-max-side", type=int, default=defaults.overlay_max_side,
                       help="longest side of the heat-map PNGs (default %(default)s)")
    group.add_argument("--alpha", type=float, default=defaults.alpha, help="heat opacity over the image")
    group.add_argument("--no-overlays", action="store_true", help="skip the PNG overlays (rasters and boxes only)")
    group.add_argument("--keep-tile-predictions", action="store_true",
                       help="also write every tile's prediction (tile_predictions/)")
    group.add_argument("--batch-size", type=int, default=None, help="tiles per model batch")
    add_tiling_options(heat_cmd)
    heat_cmd.set_defaults(handler=_heatmap)
