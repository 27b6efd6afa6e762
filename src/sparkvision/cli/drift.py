"""``drift``: is a model still seeing what it was validated on? Exit 5 when a signal drifts, for schedulers."""

from __future__ import annotations

import argparse
from typing import Any

from sparkvision.cli.common import ExitCode, Summary, UsageError, emit, fmt, spark_from_args
from sparkvision.drift.stats import PROFILE_FILE, Thresholds, parse_window

DEFAULT_SAMPLE = 1000


def _drift(args: argparse.Namespace) -> int:
    from sparkvision.drift.spark import check_drift
    from sparkvision.drift.stats import load_profile
    from sparkvision.models.model_dir import load_card

    try:
        window = parse_window(args.window) if args.window else None
        thresholds = Thresholds(psi=args.psi_threshold, feature_shift=args.feature_threshold,
                                error_share=args.error_threshold)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.sample < 0:
        raise UsageError(f"--sample must be >= 0, got {args.sample}")
    card = load_card(args.model)  # a wrong MODEL_DIR fails here, before Spark starts
    if card.kind == "detector":
        raise UsageError(f"{args.model} is a detector: drift is not supported for detectors yet")
    load_profile(args.model)  # so does a model without a profile
    spark = spark_from_args(args)
    report = check_drift(spark, args.model, args.predictions, window=window, sample=args.sample, seed=args.seed,
                         thresholds=thresholds)
    emit(report.to_dict(), _summary)
    return ExitCode.DRIFT if report.drift else ExitCode.OK


def _value(s: dict[str, Any]) -> str:
    if s["value"] is None:
        return "-"
    judged = f" (threshold {fmt(s['threshold'])})" if s["threshold"] is not None else ""
    ref = f"; reference {fmt(s['reference'])}, now {fmt(s['current'])}" if s["statistic"] in (
        "share", "share_increase") else ""
    return f"{s['statistic'].replace('_', ' ')} {fmt(s['value'])}{judged}{ref}{'  <- DRIFT' if s['drift'] else ''}"


def _summary(r: dict[str, Any]) -> Summary:
    window = r["window"]
    span = f"{window['start']} .. {window['end']}" if window.get("start") else "every row"
    verdict = f"DRIFT in {', '.join(r['drifted'])}" if r["drift"] else "no drift"
    return Summary(
        f"{verdict}: {r['rows']:,} predictions ({span}) against {r['reference']['rows']:,} reference rows",
        [*((s["name"], _value(s)) for s in r["signals"]),
         ("images re-read", r["sampled_images"]), *(("note", n) for n in r["notes"])],
    )


def register(subparsers: argparse._SubParsersAction, parents: dict[str, argparse.ArgumentParser]) -> None:
    defaults = Thresholds()
    drift = subparsers.add_parser(
        "drift",
        parents=[parents["spark"], parents["logging"]],
        help="compare a predictions set (or its latest window) with the model's reference profile",
        description="Judge PREDICTIONS (what 'sparkvision predict' wrote) against the reference profile that "
        f"'fit' and 'train' store in the model directory ({PROFILE_FILE}: the model's own predictions on its "
        "validation images). Signals: population stability index (PSI) of the predicted-class shares, of the "
        "confidence histogram and of image width, height, file size and mode; the share of low-confidence "
        "predictions; the error share; and the shift of the model's pooled features (in reference standard "
        "deviations, sampling noise removed). Image and feature signals re-read a seeded sample of the "
        "window's images by their path and run them through the model's own featurizer. Counting happens in "
        "Spark. Exit code 5 when any signal passes its threshold, 0 otherwise.",
        epilog="examples:\n"
        "  sparkvision drift --model models/imagenette --predictions predictions/\n"
        "  sparkvision drift --model models/imagenette --predictions stream-out/ --window 1d --sample 500",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    drift.add_argument("--model", required=True, metavar="MODEL_DIR", help="the model directory (kind "
                       "spark_pipeline or onnx) whose profile is the reference")
    drift.add_argument("--predictions", required=True, metavar="PREDICTIONS", help="predictions Parquet (any "
                       "Hadoop URI)")
    drift.add_argument("--window", default=None, metavar="DURATION", help="judge only the rows of the last "
                       "DURATION (30m, 12h, 1d, 2w) before the newest predicted_at; without it, or on "
                       "predictions without predicted_at, every row")
    drift.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, metavar="N", help="images re-read for the "
                       f"image and feature signals (default {DEFAULT_SAMPLE}; 0 judges the predictions only)")
    drift.add_argument("--seed", type=int, default=0, help="which images --sample picks (default 0)")
    drift.add_argument("--psi-threshold", type=float, default=defaults.psi, metavar="X",
                       help=f"a PSI above X is drift (default {defaults.psi}: above 0.25 is the usual "
                       "'significant shift')")
    drift.add_argument("--feature-threshold", type=float, default=defaults.feature_shift, metavar="X",
                       help=f"a feature shift above X reference standard deviations is drift (default "
                       f"{defaults.feature_shift})")
    drift.add_argument("--error-threshold", type=float, default=defaults.error_share, metavar="X",
                       help=f"an error share above the reference's by more than X is drift (default "
                       f"{defaults.error_share})")
    drift.set_defaults(handler=_drift)
