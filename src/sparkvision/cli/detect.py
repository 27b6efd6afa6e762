"""``detect``: boxes from a detector model directory on any image source, as Parquet."""

from __future__ import annotations

import argparse

from sparkvision.cli.common import emit, predictions_summary, spark_from_args
from sparkvision.cli.data import add_source_options, read_source
from sparkvision.detection.postprocess import DecodeSettings


def add_detection_options(parser: argparse.ArgumentParser, score_threshold: float | None = None) -> None:
    """Post-processing flags shared by ``detect``, ``predict`` (on a detector), ``tile`` and ``serve``.

    ``score_threshold`` replaces the default (``serve`` shows boxes to look at, not boxes for mAP).
    """
    defaults = DecodeSettings()
    group = parser.add_argument_group("detection")
    why = ("low, as mAP needs; raise it, e.g. 0.3, for boxes to look at" if score_threshold is None
           else "boxes worth looking at; lower it, e.g. 0.05, for recall")
    group.add_argument("--score-threshold", type=float, metavar="S",
                       default=defaults.score_threshold if score_threshold is None else score_threshold,
                       help=f"keep boxes scoring at least S, in [0, 1] (default %(default)s: {why})")
    group.add_argument("--iou-threshold", type=float, default=defaults.iou_threshold, metavar="IOU",
                       help="per-class NMS: drop a box overlapping a better one of its class by more (default %(default)s)")
    group.add_argument("--max-boxes", type=int, default=defaults.max_boxes, metavar="N",
                       help="at most N boxes per image, the most confident (default %(default)s)")


def detection_settings(args: argparse.Namespace) -> DecodeSettings:
    return DecodeSettings(score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
                          max_boxes=args.max_boxes)


def _detect(args: argparse.Namespace) -> int:
    from sparkvision.inference.predict import predict
    from sparkvision.models.model_dir import load_card

    settings = detection_settings(args)  # a bad threshold stops here, before Spark starts
    if load_card(args.model).kind != "detector":
        raise ValueError(f"{args.model} is not a detector (train one with 'sparkvision train --task detect'); "
                         "use 'sparkvision predict' for classifiers")
    spark = spark_from_args(args)
    frame = read_source(spark, args, args.input, probe="header")
    summary = predict(spark, args.model, frame, args.out, overwrite=args.overwrite, batch_size=args.batch_size,
                      detection=settings)
    emit(summary.to_dict(), predictions_summary)
    return 0


def register(subparsers: argparse._SubParsersAction, parents: dict[str, argparse.ArgumentParser]) -> None:
    det = subparsers.add_parser(
        "detect",
        parents=[parents["spark"], parents["logging"]],
        help="object detection with a detector model directory into Parquet (boxes per image, every row once)",
        description="Run the detector MODEL_DIR (from 'sparkvision train --task detect') on SRC and write Parquet "
        "with path, label (null), boxes (array of struct<label, score, xmin, ymin, xmax, ymax> in pixels of the "
        "original image, most confident first) and error. Bad images get an error, never a failed job; the "
        "output is checked to hold every input row exactly once, then moved into place.",
        epilog="Example:\n  sparkvision detect --model models/bccd --input smears/ --out detections/today\n"
        "  sparkvision evaluate --task detect --predictions detections/today --truth smears/ --out report/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    det.add_argument("--model", required=True, metavar="MODEL_DIR", help="a sparkvision detector model directory")
    det.add_argument("--input", required=True, metavar="SRC", help="images: a folder, URI, dataset, VOC or COCO source")
    det.add_argument("--out", required=True, metavar="DETECTIONS", help="output Parquet directory (any Hadoop URI)")
    det.add_argument("--overwrite", action="store_true", help="replace an existing output (atomically)")
    det.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per ONNX Runtime call")
    add_detection_options(det)
    add_source_options(det)
    det.set_defaults(handler=_detect)
