"""``evaluate`` and ``compare``: judge predictions with Spark, write a report, line several up."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from sparkvision.cli.common import Summary, UsageError, emit, fmt, given, spark_from_args
from sparkvision.config import EvaluationSettings
from sparkvision.inference.predict import probability_labels
from sparkvision.progress import spark_progress

log = logging.getLogger(__name__)


def _labels_arg(text: str | None) -> tuple[list[str], str]:
    """--labels: a file with one label per line, or a comma-separated list."""
    if not text:
        return [], ""
    path = Path(text)
    if path.is_file():
        return [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()], str(path)
    return [name.strip() for name in text.split(",") if name.strip()], "--labels"


def _evaluate_detect(args: argparse.Namespace) -> int:
    """``--task detect``: boxes against true boxes (COCO mAP, VOC AP), report with PR curves and drawn boxes."""
    from sparkvision.config import DetectionEvaluationSettings
    from sparkvision.evaluation.detection import evaluate_detections, load_truth, worst_images
    from sparkvision.evaluation.detection_report import write_report

    if not args.truth:
        raise UsageError("--task detect needs --truth SRC (a VOC directory, COCO JSON or ingested dataset)")
    settings = given(DetectionEvaluationSettings(), score_threshold=args.score_threshold,
                     max_detections=args.max_detections, gallery_size=args.gallery)
    spark = spark_from_args(args)
    predictions = spark.read.parquet(args.predictions)
    truth = load_truth(spark, args.truth, args.images)
    with spark_progress(spark, "evaluate"):
        result = evaluate_detections(predictions, truth, settings)
    model_name = None
    if args.model:
        from sparkvision.models.model_dir import load_card

        model_name = load_card(args.model).name
    result.source = {
        "predictions": args.predictions,
        "truth": args.truth,
        "model_dir": args.model,
        "model": model_name,
        "report_dir": args.out,
    }
    with spark_progress(spark, "report"):
        worst = worst_images(predictions, truth, settings.gallery_size, settings)
        html_path = write_report(args.out, result, worst, args.model, spark, args.images, settings,
                                 args.title)
    log.info("mAP@[.5:.95] %s, mAP@0.5 %s on %d images; report at %s", result.map, result.map50,
             result.evaluated_images, html_path)
    emit(result.to_dict(), _detect_summary)
    return 0


def _detect_summary(r: dict[str, Any]) -> Summary:
    report = Path(r["source"]["report_dir"])
    at = r.get("at_threshold") or {}
    status = r["image_status"]
    scored = [c for c in r.get("per_class", []) if c.get("ap50") is not None]
    weakest = min(scored, key=lambda c: c["ap50"], default=None)
    threshold = r["settings"]["score_threshold"]
    return Summary(
        f"judged {r['evaluated_images']:,} of {r['images']:,} images: report in {report / 'report.html'}",
        [("mAP@[.5:.95]", r.get("map")), ("mAP@0.5", r.get("map50")), ("VOC AP@0.5", r.get("voc_map50")),
         (f"precision / recall (score >= {threshold})", f"{fmt(at.get('precision'))} / {fmt(at.get('recall'))}"),
         ("boxes", f"{fmt(r['truths'])} true, {fmt(r['predictions'])} predicted"),
         ("images left out", f"{fmt(status['truth_error'])} with annotation errors, {fmt(status['no_truth'])} "
                             "not in the truth"),
         ("failed predictions", f"{fmt(status['prediction_error'] + status['no_prediction'])} (their true boxes "
                                "count as missed)"),
         ("weakest class", f"{weakest['label']} (AP@0.5 {fmt(weakest['ap50'])})" if weakest else None),
         ("metrics", str(report / "metrics.json"))],
    )


def _evaluate(args: argparse.Namespace) -> int:
    if args.task == "detect":
        return _evaluate_detect(args)
    if args.truth:
        raise UsageError("--truth is for --task detect; classification predictions carry their true label")
    # Imported here: matplotlib should not slow down every other command's start.
    from sparkvision.evaluation.metrics import evaluate_predictions
    from sparkvision.evaluation.report import write_report
    from sparkvision.models.model_dir import load_card

    settings = given(EvaluationSettings(), top_k=args.top_k, calibration_bins=args.bins, gallery_size=args.gallery)
    card = load_card(args.model) if args.model else None  # a wrong --model fails here, before Spark starts
    spark = spark_from_args(args)
    predictions = spark.read.parquet(args.predictions)
    labels, labels_from = _labels_arg(args.labels)
    if not labels:
        labels, labels_from = probability_labels(spark, args.predictions, args.model)
    with spark_progress(spark, "evaluate"):
        result = evaluate_predictions(predictions, labels, settings=settings)
    result.source = {
        "predictions": args.predictions,
        "model_dir": args.model,
        "model": card.name if card else None,
        "labels_from": labels_from,
        "top_k": settings.top_k,
        "calibration_bins": settings.calibration_bins,
        "report_dir": args.out,
    }
    with spark_progress(spark, "report"):
        html_path = write_report(args.out, result, predictions, args.model, spark, args.images, settings, args.title)
    log.info("accuracy %s on %d rows; report at %s", result.accuracy, result.evaluated_rows, html_path)
    emit(result.to_dict(), _evaluate_summary)
    return 0


def _evaluate_summary(r: dict[str, Any]) -> Summary:
    report = Path(r["source"]["report_dir"])
    macro = r.get("macro") or {}
    per_class = [c for c in r.get("per_class", []) if c.get("f1") is not None]
    weakest = min(per_class, key=lambda c: c["f1"], default=None)
    k = r["source"]["top_k"]
    return Summary(
        f"evaluated {r['evaluated_rows']:,} of {r['rows']:,} predictions: report in {report / 'report.html'}",
        [("accuracy", r.get("accuracy")), ("balanced accuracy", r.get("balanced_accuracy")),
         ("macro F1", macro.get("f1")), (f"top-{k} accuracy", r["top_k"].get(str(k))),
         ("log loss", r.get("log_loss")), ("calibration error (ECE)", r.get("ece")),
         ("rows left out", f"{fmt(r['error_rows'])} with errors, {fmt(r['unlabeled_rows'])} without a label"),
         ("weakest class", f"{weakest['label']} (F1 {fmt(weakest['f1'])})" if weakest else None),
         ("metrics", str(report / "metrics.json"))],
        [f"sparkvision compare {report} OTHER_REPORT_DIR"],
    )


def _compare(args: argparse.Namespace) -> int:
    from sparkvision.evaluation.report import compare_reports, write_compare

    comparison = compare_reports(args.reports)
    if args.out:
        path = write_compare(args.out, comparison)
        log.info("wrote %s", path)
    emit(comparison, _compare_summary)
    return 0


def _compare_summary(c: dict[str, Any]) -> Summary:
    shown = ("accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy", "log_loss", "ece", "evaluated_rows")
    facts = [("", "   ".join(c["models"]))]
    facts += [(key, "   ".join(fmt(v) for v in c["metrics"][key])
               + (f"   (best: {c['best'][key]})" if key in c["best"] else "")) for key in shown if key in c["metrics"]]
    return Summary(f"{len(c['models'])} reports side by side", facts)


def register(subparsers: argparse._SubParsersAction, parents: dict[str, argparse.ArgumentParser]) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        parents=[parents["spark"], parents["logging"]],
        help="metrics and an HTML report for a predictions set",
        description="Judge PREDICTIONS (the Parquet that 'sparkvision predict' writes: path, label, prediction, "
        "probability, error) with Spark aggregations, so any number of rows works with a small driver. Prints the "
        "metrics as JSON and writes REPORT_DIR/metrics.json and a self-contained REPORT_DIR/report.html: summary, "
        "per-class table, confusion-matrix heat map, reliability diagram, training curves (when --model has "
        "curves.csv) and the most confidently wrong images. Rows with errors and rows without a true label are "
        "counted apart, never dropped silently.",
    )
    evaluate.add_argument("--predictions", required=True, metavar="PREDICTIONS", help="predictions Parquet (any Hadoop URI)")
    evaluate.add_argument("--out", required=True, metavar="REPORT_DIR", help="report directory (local), created if missing")
    evaluate.add_argument("--model", default=None, metavar="MODEL_DIR", help="model directory: label order of the probabilities, "
                          "model name, training curves")
    evaluate.add_argument("--labels", default=None, help="label order of the probabilities when there is no "
                          "--model: a file with one label per line, or a comma-separated list")
    evaluate.add_argument("--top-k", type=int, default=None, metavar="K", help="k of top-k accuracy (default 5)")
    evaluate.add_argument("--bins", type=int, default=None, metavar="N", help="confidence bins for calibration (default 15)")
    evaluate.add_argument("--gallery", type=int, default=None, metavar="N", help="confidently wrong images to show (default 24)")
    evaluate.add_argument("--images", default=None, metavar="SRC", help="image source (dataset, folder) to read thumbnails from "
                          "when the predictions' paths cannot be read directly; with a COCO --truth, where its images are")
    evaluate.add_argument("--title", default=None, help="report title")
    evaluate.add_argument("--task", choices=("classify", "detect"), default="classify",
                          help="classify (default): predictions with labels and probabilities; detect: boxes "
                          "('sparkvision detect' output) judged against --truth with COCO mAP@[.5:.95], mAP@0.5 and "
                          "VOC AP@0.5, precision-recall curves and the worst images with their boxes drawn")
    evaluate.add_argument("--truth", default=None, metavar="SRC", help="--task detect: the true boxes (a Pascal "
                          "VOC directory, a COCO instances JSON, or a dataset ingested from one)")
    evaluate.add_argument("--score-threshold", type=float, default=None, metavar="S", help="--task detect: the "
                          "operating point for precision/recall and the boxes drawn (default 0.5)")
    evaluate.add_argument("--max-detections", type=int, default=None, metavar="N", help="--task detect: boxes "
                          "kept per image and class, highest scores first (default 100, as COCO)")
    evaluate.set_defaults(handler=_evaluate)

    compare = subparsers.add_parser(
        "compare",
        parents=[parents["logging"]],
        help="the metrics of several evaluation reports side by side",
        description="Read the metrics.json of each REPORT_DIR (written by 'sparkvision evaluate') and print the "
        "headline metrics and per-class F1 side by side as JSON; with --out also write compare.json and "
        "compare.html there.",
    )
    compare.add_argument("reports", nargs="+", metavar="REPORT_DIR", help="directories written by evaluate")
    compare.add_argument("--out", default=None, metavar="OUT_DIR", help="directory for compare.json and compare.html")
    compare.set_defaults(handler=_compare)
