"""``optimize``, ``export`` and ``serve``: make a model smaller and faster, and put it behind HTTP."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from sparkvision.cli.common import ExitCode, Summary, UsageError, emit, spark_from_args
from sparkvision.cli.detect import add_detection_options
from sparkvision.config import MeasureSettings, PruneSettings, QuantizeSettings, ServeSettings
from sparkvision.config.training import FINE_TUNE_PRUNED
from sparkvision.progress import spark_progress

log = logging.getLogger(__name__)


def _optimize(args: argparse.Namespace) -> int:
    from sparkvision.deploy.measure import AccuracyDropError
    from sparkvision.deploy.optimize import OptimizeRequest, optimize_model

    quantize = QuantizeSettings(
        method="dynamic" if args.dynamic else "static", per_channel=not args.per_tensor,
        calibration_images=args.calibration_images,
    )
    measure = replace(MeasureSettings(), max_accuracy_drop=args.max_accuracy_drop, val_images=args.val_images,
                      threads=args.threads, bench_images=args.bench_images)
    request = OptimizeRequest(
        int8=args.int8, prune=PruneSettings(amount=args.prune) if args.prune is not None else None,
        fine_tune=_fine_tune(args),
        quantize=quantize, measure=measure, calibration=args.calibration, val=args.val, force=args.force,
        overwrite=args.overwrite,
    )
    spark = spark_from_args(args)
    try:
        report = optimize_model(spark, args.model, args.out, request)
    except AccuracyDropError as exc:
        log.error("%s", exc)
        emit({"written": False, **exc.report.to_dict()}, _optimize_summary)
        return ExitCode.REFUSED
    emit({"written": True, "out": args.out, **report.to_dict()}, _optimize_summary)
    return 0


def _optimize_summary(r: dict) -> Summary:
    base, opt = r["baseline"], r["optimized"]
    accuracy = (f"{base['accuracy']:.4f} -> {opt['accuracy']:.4f} ({-r['accuracy_drop_points']:+.2f} points, "
                f"at most -{r['max_accuracy_drop']:.2f} allowed)" if r["accuracy_drop_points"] is not None else None)
    if r["written"]:
        headline = f"optimised model written to {r['out']}" + (" (forced past the accuracy check)" * r["forced"])
    else:
        headline = "refused: the optimised model lost too much accuracy; nothing written (--force writes it)"
    return Summary(headline, [
        ("accuracy", accuracy), ("top-1 agreement", f"{r['top1_agreement']:.4f} on {r['eval_images']:,} images"),
        ("images/s", f"{base['images_per_second']:.1f} -> {opt['images_per_second']:.1f} ({r['speedup']:.2f}x)"),
        ("size", f"{base['size_mb']:.2f} -> {opt['size_mb']:.2f} MB"),
    ], [f"sparkvision serve --model {r['out']}"] if r["written"] else [])


def _fine_tune(args: argparse.Namespace):
    """The --fine-tune-* flags as a request: FINE_TUNE_PRUNED, then the flags given."""
    if not args.fine_tune_train:
        given = [f for f in ("fine_tune_val", "fine_tune_epochs", "fine_tune_lr", "fine_tune_batch_size",
                             "fine_tune_workers", "fine_tune_val_fraction") if getattr(args, f) is not None]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --fine-tune-train SRC")
        return None
    from sparkvision.config.training import FINE_TUNE_PRUNED, TrainConfig, apply_overrides
    from sparkvision.deploy.prune import FineTuneRequest

    config = apply_overrides(TrainConfig(), FINE_TUNE_PRUNED)
    flags = {"epochs": args.fine_tune_epochs, "batch_size": args.fine_tune_batch_size, "seed": args.fine_tune_seed,
             "optimizer": {"lr": args.fine_tune_lr}, "scaling": {"workers": args.fine_tune_workers},
             "data": {"val_fraction": args.fine_tune_val_fraction}}
    overrides = {}
    for key, value in flags.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        if value not in (None, {}):
            overrides[key] = value
    return FineTuneRequest(train=args.fine_tune_train, val=args.fine_tune_val,
                           config=apply_overrides(config, overrides))


def _export(args: argparse.Namespace) -> int:
    from sparkvision.deploy.export import export_pipeline, export_registered, verify_export

    if args.registered:
        if not args.out:
            raise UsageError("--registered needs --out MODEL_DIR")
        out = export_registered(args.registered, args.out, overwrite=args.overwrite)
        emit({"out": str(out), "model": args.registered},
             lambda r: Summary(f"model directory of registered {r['model']} written to {r['out']}",
                               next=[f"sparkvision serve --model {r['out']}"]))
        return 0
    if not args.model_dir:
        raise UsageError("give a spark_pipeline MODEL_DIR, or --registered NAME --out MODEL_DIR")
    spark = spark_from_args(args)
    with spark_progress(spark, "export"):
        path = export_pipeline(spark, args.model_dir)
    result = {"model_dir": args.model_dir, "onnx": str(path)}
    if args.verify:
        with spark_progress(spark, "verify"):
            result["verify"] = verify_export(spark, args.model_dir, args.verify, args.verify_images)
    emit(result, _export_summary)
    return 0


def _export_summary(r: dict) -> Summary:
    verify = r.get("verify")
    return Summary(f"exported {r['model_dir']} to {r['onnx']}", [
        ("verified on", f"{verify['images']:,} images" if verify else None),
        ("agreement with Spark", verify["prediction_agreement"] if verify else None),
        ("largest probability difference", verify["max_probability_difference"] if verify else None),
    ], [f"sparkvision serve --model {r['model_dir']}"])


def _serve(args: argparse.Namespace) -> int:
    from sparkvision.deploy.serve import run_server

    settings = ServeSettings(
        host=args.host, port=args.port, batching=not args.no_batching, max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms, max_body_bytes=args.max_body_bytes, max_pixels=args.max_pixels,
        max_files=args.max_files, top_k=args.top_k, score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold, max_boxes=args.max_boxes, threads=args.threads,
        decode_workers=args.decode_workers, tta=args.tta,
        log_level="warning" if args.quiet else ("debug" if args.verbose else "info"),
    )
    run_server(args.model, settings)
    return 0


def register(subparsers: argparse._SubParsersAction, parents: dict[str, argparse.ArgumentParser]) -> None:
    common = [parents["spark"], parents["logging"]]
    q, m, s = QuantizeSettings(), MeasureSettings(), ServeSettings()

    optimize = subparsers.add_parser(
        "optimize", parents=common,
        help="int8-quantise and/or prune a model directory, measured against the original",
        description="Make MODEL_DIR smaller and faster: --prune AMOUNT zeroes that fraction of the output channels "
        "of every convolution (torch.nn.utils.prune, L2), --int8 quantises statically with ONNX Runtime "
        "(QDQ, per-channel int8 weights, uint8 activations, calibrated on --calibration images); --fine-tune-train "
        "SRC fine-tunes the pruned network through the training engine first. The result is "
        "measured against the original on validation images: top-1 agreement, accuracy, size, images/second. "
        "It is written to --out only if accuracy drops at most --max-accuracy-drop points (unless --force); "
        "the report goes to OUT/optimization.json and stdout. Exit code 3: refused.",
    )
    optimize.add_argument("--model", required=True, help="model directory to optimise (any kind; a 'fit' model without model.onnx is exported first)")
    optimize.add_argument("--out", required=True, help="new model directory for the optimised model")
    optimize.add_argument("--int8", action="store_true", help="static int8 quantisation")
    optimize.add_argument("--calibration", metavar="SRC",
                          help="calibration images (folder, dataset, built-in name); also the validation images "
                          "(the rows after the calibration ones) when --val is not given")
    optimize.add_argument("--calibration-images", type=int, default=q.calibration_images,
                          help=f"images used for calibration (default {q.calibration_images})")
    optimize.add_argument("--per-tensor", action="store_true",
                          help="per-tensor weight scales (faster to quantise, measured to lose more accuracy)")
    optimize.add_argument("--dynamic", action="store_true",
                          help="dynamic quantisation instead (no calibration; measured very slow for CNNs)")
    optimize.add_argument("--prune", type=float, default=None, metavar="AMOUNT",
                          help="fraction of output channels to zero in each convolution, e.g. 0.3")
    tune = optimize.add_argument_group(
        "fine-tuning after --prune (through the training engine, like 'sparkvision train'; pruned channels stay zero)")
    tune.add_argument("--fine-tune-train", metavar="SRC",
                      help="fine-tune the pruned network on these labelled images (classes must be the model's)")
    tune.add_argument("--fine-tune-val", metavar="SRC",
                      help="validation images for fine-tuning's best-epoch choice (keep them apart from --val)")
    tune.add_argument("--fine-tune-val-fraction", type=float, default=None, metavar="F",
                      help="carve that validation part out of --fine-tune-train instead")
    tune.add_argument("--fine-tune-epochs", type=int, default=None,
                      help=f"epochs (default {FINE_TUNE_PRUNED['epochs']})")
    tune.add_argument("--fine-tune-lr", type=float, default=None,
                      help=f"SGD learning rate, cosine schedule (default {FINE_TUNE_PRUNED['optimizer']['lr']})")
    tune.add_argument("--fine-tune-batch-size", type=int, default=None,
                      help=f"global batch size (default {FINE_TUNE_PRUNED['batch_size']})")
    tune.add_argument("--fine-tune-workers", type=int, default=None, help="data-parallel ranks (default 1)")
    tune.add_argument("--fine-tune-seed", type=int, default=None, help="seed of the fine-tuning run (default 42)")
    optimize.add_argument("--val", metavar="SRC", help="labelled validation images to measure on")
    optimize.add_argument("--val-images", type=int, default=m.val_images,
                          help=f"at most this many validation images (default {m.val_images})")
    optimize.add_argument("--max-accuracy-drop", type=float, default=m.max_accuracy_drop,
                          help=f"refuse when accuracy drops more than this many points (default {m.max_accuracy_drop})")
    optimize.add_argument("--force", action="store_true", help="write the optimised model even when refused")
    optimize.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    optimize.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads when timing (default: all)")
    optimize.add_argument("--bench-images", type=int, default=m.bench_images,
                          help=f"images per timing round, {m.rounds} rounds per model (default {m.bench_images})")
    optimize.set_defaults(handler=_optimize)

    export = subparsers.add_parser(
        "export", parents=common,
        help="write model.onnx for a fitted pipeline (featurizer + MLlib classifier in one graph)",
        description="Export MODEL_DIR (kind spark_pipeline) to one ONNX graph: the featurizer's graph with the "
        "MLlib classifier's weights appended (logistic regression, linear SVC, multilayer perceptron), so "
        "'sparkvision serve' and 'optimize' run it without Spark. --verify SRC compares its predictions with "
        "the Spark pipeline's. With --registered NAME --out DIR, writes an onnx model directory of a "
        "registered model (e.g. efficientnet_lite0 with its ImageNet labels).",
    )
    export.add_argument("model_dir", nargs="?", help="spark_pipeline model directory (model.onnx is added)")
    export.add_argument("--verify", metavar="SRC", help="images on which Spark and ONNX predictions are compared")
    export.add_argument("--verify-images", type=int, default=200, help="at most this many images (default 200)")
    export.add_argument("--registered", metavar="NAME", help="a registered model to write as a model directory")
    export.add_argument("--out", help="output model directory (with --registered)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    export.set_defaults(handler=_export)

    serve = subparsers.add_parser(
        "serve", parents=[parents["logging"]],
        help="HTTP service and web page for a classifier or detector model directory",
        description="Serve MODEL_DIR over HTTP: POST /v1/predict (multipart images or raw bytes) answers the "
        "top classes of each image (?top_k=) or, for a detector, its boxes in the image's own pixels "
        "(?score_threshold=&iou_threshold=&max_boxes=, defaults below); GET /v1/models, /healthz, /readyz, "
        "/metrics (Prometheus), and a web page at / that shows the classes or draws the boxes. Concurrent "
        "requests are grouped into one ONNX Runtime call (micro-batching); bad requests get 4xx answers.",
    )
    serve.add_argument("--model", required=True,
                       help="model directory (any kind; a 'fit' model without model.onnx is exported first)")
    serve.add_argument("--host", default=s.host, help=f"address to listen on (default {s.host})")
    serve.add_argument("--port", type=int, default=s.port, help=f"port (default {s.port})")
    serve.add_argument("--max-batch", type=int, default=s.max_batch,
                       help=f"most images per ONNX Runtime call (default {s.max_batch})")
    serve.add_argument("--batch-window-ms", type=float, default=s.batch_window_ms,
                       help=f"how long an idle model waits to group requests (default {s.batch_window_ms})")
    serve.add_argument("--no-batching", action="store_true", help="one ONNX Runtime call per request")
    serve.add_argument("--max-body-bytes", type=int, default=s.max_body_bytes,
                       help=f"largest request body (default {s.max_body_bytes:,})")
    serve.add_argument("--max-pixels", type=int, default=s.max_pixels,
                       help=f"largest image in pixels (default {s.max_pixels:,})")
    serve.add_argument("--max-files", type=int, default=s.max_files,
                       help=f"most images per request (default {s.max_files})")
    serve.add_argument("--top-k", type=int, default=s.top_k,
                       help=f"a classifier's classes returned by default (default {s.top_k})")
    serve.add_argument("--tta", choices=["none", "flip"], default=None,
                       help="a classifier's test-time augmentation: flip averages each upload with its mirror "
                       "image (default: what the model was fitted with)")
    serve.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    serve.add_argument("--decode-workers", type=int, default=s.decode_workers,
                       help=f"threads decoding uploads (default {s.decode_workers})")
    add_detection_options(serve, score_threshold=s.score_threshold)
    serve.set_defaults(handler=_serve)
