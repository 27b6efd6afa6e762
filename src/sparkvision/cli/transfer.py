"""``fit``, ``predict``, ``classify`` and ``demo``: transfer learning on Spark, the main job."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyspark.sql import functions as F

from sparkvision.cli.common import (
    Summary,
    UsageError,
    add_int8_options,
    emit,
    fmt,
    int8_facts,
    predictions_summary,
    spark_from_args,
)
from sparkvision.cli.data import add_source_options, decode_settings, ingest_settings, read_source
from sparkvision.cli.detect import add_detection_options, detection_settings
from sparkvision.cli.models import add_backbone_options, backbone_from_args
from sparkvision.config import FeaturizeSettings, TransferSettings
from sparkvision.io.schema import PATH
from sparkvision.progress import spark_progress

log = logging.getLogger(__name__)


def metrics_report(metrics: dict[str, Any]) -> dict[str, Any]:
    """The validation numbers a person reads first: accuracy, macro averages, per-class P/R/F1."""
    macro = metrics.get("macro") or {}
    return {
        "accuracy": metrics.get("accuracy"),
        "balanced_accuracy": metrics.get("balanced_accuracy"),
        "macro_precision": macro.get("precision"),
        "macro_recall": macro.get("recall"),
        "macro_f1": macro.get("f1"),
        "top5_accuracy": (metrics.get("top_k") or {}).get("5"),
        "rows": metrics.get("rows"),
        "evaluated_rows": metrics.get("evaluated_rows"),
        "error_rows": metrics.get("error_rows"),
        "per_class": {
            c["label"]: {"precision": c["precision"], "recall": c["recall"], "f1": c["f1"], "support": c["support"]}
            for c in metrics.get("per_class", [])
        },
    }


def _settings(args: argparse.Namespace) -> TransferSettings:
    overrides: dict[str, Any] = {"classifier": args.classifier, "grid": args.grid}
    backbone = backbone_from_args(args)
    if backbone is not None:
        overrides["model_name"] = backbone
    for flag, name in (("output", "output"), ("seed", "seed"),
                       ("val_fraction", "val_fraction"), ("batch_size", "batch_size"), ("folds", "grid_folds"),
                       ("tta", "tta"), ("pca", "pca"), ("int8", "int8"), ("int8_max_drop", "int8_max_drop")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[name] = value
    try:
        settings = replace(TransferSettings(), **overrides)
        count = _feature_count(settings) if settings.pca is not None else None
        if count:
            settings.check_feature_count(count)
    except ValueError as exc:  # the config's own checks, as one-line usage errors before Spark starts
        raise UsageError(str(exc)) from None
    return settings


def _feature_count(settings: TransferSettings) -> int | None:
    """Length of the backbone output the classifier learns from, where its registry entry declares it
    (fit checks the graph's own again before featurizing)."""
    from sparkvision.models import get_spec

    spec = get_spec(settings.model_name)
    return spec.num_classes if settings.output == "logits" and spec.num_classes else spec.num_features


def _fit_report(spark, args: argparse.Namespace, train_src: str, val_src: str | None, out: str,
                settings: TransferSettings) -> dict[str, Any]:
    from sparkvision.ml.classifier import fit_from_sources

    model, path = fit_from_sources(
        spark, train_src, out, settings, val_src=val_src, per_class=args.per_class,
        val_per_class=args.val_per_class, overwrite=args.overwrite,
        source_reader=lambda src: read_source(spark, args, src, probe="header"),
    )
    return {
        "model": str(path),
        "backbone": settings.model_name,
        "labels": model.labels,
        "classifier": settings.classifier,
        "classifier_params": model.classifier_params,
        "pca": model.provenance.get("pca"),
        "grid": model.grid_results,
        "model_selection": model.provenance.get("model_selection"),
        "validation": metrics_report(model.metrics),
        "int8": model.metrics.get("int8"),
    }


def _fit(args: argparse.Namespace) -> int:
    if args.auto:
        return _fit_auto(args)
    if args.finetune:
        raise UsageError("--finetune adds the fine-tune preset to the candidates of --auto; use it with --auto "
                         "(or run 'sparkvision train --preset finetune')")
    settings = _settings(args)  # an unknown backbone fails here, before Spark starts
    spark = spark_from_args(args)
    emit(_fit_report(spark, args, args.train, args.val, args.out, settings), _fit_summary)
    return 0


def _auto_backbones(args: argparse.Namespace) -> list[str] | None:
    """``--auto``'s candidates: each of ``--backbone A,B,...`` (registered now if a file), else None (every
    offline backbone)."""
    if args.backbone is None:
        backbone_from_args(args)  # --backbone-size/-norm without a file is still a usage error
        return None
    names = [n.strip() for n in args.backbone.split(",") if n.strip()]
    return [backbone_from_args(argparse.Namespace(**{**vars(args), "backbone": n})) for n in names]


def _fit_auto(args: argparse.Namespace) -> int:
    from sparkvision.ml.auto import fit_auto

    backbones = _auto_backbones(args)  # an unknown backbone fails here, before Spark starts
    settings = _settings(argparse.Namespace(**{**vars(args), "backbone": None, "backbone_size": None,
                                               "backbone_norm": None}))
    spark = spark_from_args(args)
    result = fit_auto(
        spark, args.train, args.out, settings, val_src=args.val, per_class=args.per_class,
        val_per_class=args.val_per_class, overwrite=args.overwrite,
        source_reader=lambda src: read_source(spark, args, src, probe="header"), backbones=backbones,
        finetune=args.finetune,
    )
    emit({**result.to_dict(), "validation": metrics_report(result.validation)}, _fit_auto_summary)
    return 0


def auto_table_lines(table: list[dict[str, Any]]) -> list[str]:
    """The comparison of ``fit --auto`` as aligned text lines, a header first (the CLI summary's)."""
    def cell(value: Any, digits: str = ".4f") -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return format(value, digits) if isinstance(value, float) else str(value)

    width = max(len("candidate"), *(len(r["candidate"]) for r in table))
    lines = [f"{'candidate':<{width}}  {'GFLOPs':>6}  {'regParam':>8}  {'std':>3}  {'CV acc':>6}  {'val acc':>7}  "
             f"{'feat s':>6}  {'fit s':>6}  chosen"]
    for r in table:
        lines.append(f"{r['candidate']:<{width}}  {cell(r['gflops'], '.3g'):>6}  {cell(r['regParam'], 'g'):>8}  "
                     f"{cell(r['standardization']):>3}  {cell(r['cv_accuracy']):>6}  {cell(r['val_accuracy']):>7}  "
                     f"{cell(r['featurize_seconds'], '.1f'):>6}  {cell(r['fit_seconds'], '.1f'):>6}  "
                     f"{'<-' if r['chosen'] else ''}")
    return lines


def _fit_auto_summary(r: dict[str, Any]) -> Summary:
    lines = auto_table_lines(r["table"])
    cost = r["cost"]
    return Summary(
        f"fit --auto: {r['chosen']} is the best of {len(r['table'])} candidates by {r['selected_by'].replace('_', ' ')}"
        f"; model in {r['model']}",
        [("compared", lines[0]), *(("", line) for line in lines[1:]),
         ("estimated cost", f"{cost['total_seconds']:g} s ({cost['method']})"),
         *_validation_facts(r["validation"]), *(("note", n) for n in r["notes"])],
        [f"sparkvision predict --model {r['model']} --input SRC --out PREDICTIONS",
         f"sparkvision evaluate --predictions PREDICTIONS --model {r['model']} --out REPORT_DIR"],
    )


def _validation_facts(v: dict[str, Any]) -> list[tuple[str, Any]]:
    per_class = v.get("per_class") or {}
    weakest = min(per_class.items(), key=lambda kv: kv[1]["f1"] if kv[1]["f1"] is not None else 2.0, default=None)
    return [
        ("accuracy", v.get("accuracy")), ("balanced accuracy", v.get("balanced_accuracy")),
        ("macro F1", v.get("macro_f1")), ("top-5 accuracy", v.get("top5_accuracy")),
        ("rows", f"{fmt(v.get('evaluated_rows'))} evaluated, {fmt(v.get('error_rows'))} with errors"),
        ("weakest class", f"{weakest[0]} (F1 {fmt(weakest[1]['f1'])})" if weakest else None),
    ]


def _selection_facts(selection: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not selection:
        return []
    return [("chosen by CV", f"regParam {selection['regParam']:g}, standardization {selection['standardization']} "
                             f"(CV accuracy {fmt(selection['cv_accuracy'])}; {selection['method']})")]


def _pca_facts(pca: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not pca:
        return []
    return [("PCA", f"{pca['k']} of {pca['input_features']} dimensions, {pca['explained_variance']:.1%} of the "
                    "variance")]


def _fit_summary(r: dict[str, Any]) -> Summary:
    return Summary(
        f"fitted {r['classifier']} on {r['backbone']} features, {len(r['labels'])} classes: model in {r['model']}",
        [*_validation_facts(r["validation"]), ("classes", r["labels"]), *_pca_facts(r.get("pca")),
         *_selection_facts(r.get("model_selection")), *int8_facts(r.get("int8"))],
        [f"sparkvision predict --model {r['model']} --input SRC --out PREDICTIONS"],
    )


def _predict(args: argparse.Namespace) -> int:
    from sparkvision.models.model_dir import load_card

    _check_predict_modes(args)
    load_card(args.model)  # a wrong MODEL_DIR fails here, before Spark starts
    spark = spark_from_args(args)
    if args.stream:
        from sparkvision.inference.stream import predict_stream

        summary = predict_stream(
            spark, args.model, args.input, args.out, args.checkpoint, trigger=args.trigger,
            max_files_per_trigger=args.max_files_per_trigger, ingest=ingest_settings(args),
            decode=decode_settings(args), glob=args.glob, batch_size=args.batch_size,
            detection=detection_settings(args), tta=args.tta, timeout=args.timeout)
        emit(summary.to_dict(), stream_summary)
        return 0
    frame = read_source(spark, args, args.input, probe="header")
    if args.incremental:
        from sparkvision.inference.predict import predict_incremental

        files = args.source_kind in ("auto", "folder", "binaryFile", "voc") and _is_file_source(spark, args)
        summary = predict_incremental(
            spark, args.model, frame, args.out, source=args.input if files else None, ingest=ingest_settings(args),
            glob=args.glob, key="hash" if args.hash else ("stat" if files else "hash"),
            batch_size=args.batch_size, detection=detection_settings(args), tta=args.tta)
        emit(summary.to_dict(), incremental_summary)
        return 0
    from sparkvision.inference.predict import predict

    summary = predict(spark, args.model, frame, args.out, overwrite=args.overwrite, batch_size=args.batch_size,
                      detection=detection_settings(args), tta=args.tta, int8=args.int8,
                      int8_max_drop=args.int8_max_drop if args.int8_max_drop is not None
                      else TransferSettings.int8_max_drop)
    emit(summary.to_dict(), predictions_summary)
    return 0


def _is_file_source(spark, args: argparse.Namespace) -> bool:
    """Whether SRC is a folder or URI of image files (sizes and times to key on), not a dataset or built-in."""
    from sparkvision.io.load import resolve_kind

    kind = resolve_kind(spark, args.input) if args.source_kind == "auto" else args.source_kind
    return kind in ("folder", "binaryFile", "voc")


def _check_predict_modes(args: argparse.Namespace) -> None:
    if args.stream and args.incremental:
        raise UsageError("--stream and --incremental are two ways to append; choose one")
    if (args.stream or args.incremental) and args.overwrite:
        raise UsageError("--overwrite replaces a whole output; --stream and --incremental append to it")
    if args.stream and not args.checkpoint:
        raise UsageError("--stream needs --checkpoint DIR (where Spark records which files are done)")
    if not args.stream and (args.checkpoint or args.max_files_per_trigger or args.timeout is not None
                            or args.trigger != "available-now"):
        raise UsageError("--checkpoint, --trigger, --max-files-per-trigger and --timeout apply to --stream")
    if args.hash and not args.incremental:
        raise UsageError("--hash applies to --incremental")
    if args.int8 and (args.stream or args.incremental):
        raise UsageError("--int8 quantises on a batch predict's input; for --stream and --incremental, fit the "
                         "model with --int8 (or 'sparkvision optimize --int8') first")
    if args.int8_max_drop is not None and not args.int8:
        raise UsageError("--int8-max-drop applies to --int8")
    if args.stream:
        from sparkvision.inference.stream import parse_trigger

        try:
            parse_trigger(args.trigger)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.source_kind not in ("auto", "binaryFile", "folder"):
            raise UsageError("--stream reads new image files from a folder or URI (--source-kind folder or "
                             "binaryFile)")


def incremental_summary(r: dict[str, Any]) -> Summary:
    if r["batch"] is None:
        return Summary(f"nothing new: all {r['skipped']:,} input rows were already predicted by model "
                       f"{r['model_version']} into {r['out']}; nothing written")
    summary = predictions_summary(r)
    summary.headline = (f"predicted {r['rows']:,} new rows into {r['out']} (part batch={r['batch']}); "
                        f"{r['skipped']:,} already predicted by model {r['model_version']} were skipped")
    return summary


def stream_summary(r: dict[str, Any]) -> Summary:
    return Summary(
        f"stream {r['stopped_by']}: {r['batches']:,} micro-batches, {r['rows']:,} rows appended to {r['out']} "
        f"({r['errors']:,} with errors) in {r['seconds']:.1f} s",
        [("model", f"{r['model']} ({r['kind']}, version {r['model_version']})"), ("checkpoint", r["checkpoint"]),
         ("trigger", r["trigger"]), ("predicted classes", r["predicted_classes"] or None),
         ("errors", r["error_kinds"] or None)],
        [f"sparkvision evaluate --predictions {r['out']} --out REPORT_DIR"] if r["kind"] != "detector" else [],
    )


def _classify(args: argparse.Namespace) -> int:
    from sparkvision.ml.predictor import ImagePredictor

    backbone = backbone_from_args(args, needs_labels=True)
    spark = spark_from_args(args)
    frame = read_source(spark, args, args.input, probe="header")
    if not args.out:
        frame = frame.orderBy(PATH).limit(args.limit)  # only the printed rows go through the model
    predictor = ImagePredictor(modelName=backbone, topK=args.top_k, probabilityCol="",
                               batchSize=args.batch_size or FeaturizeSettings.batch_size, tta=args.tta or "none")
    result = predictor.transform(frame).select(PATH, "prediction", "top_k", "error")
    if args.out:
        from sparkvision import storage

        with storage.atomic_dir(args.out, spark, overwrite=args.overwrite) as staging, \
                spark_progress(spark, "classify"):
            result.write.parquet(staging)
        written = spark.read.parquet(args.out)
        emit({"out": args.out, "rows": written.count(), "errors": written.where(F.col("error").isNotNull()).count()},
             lambda r: Summary(f"classified {r['rows']:,} images into {r['out']}: {r['errors']:,} with errors"))
        return 0
    with spark_progress(spark, "classify"):
        rows = result.orderBy(PATH).collect()
    emit([
        {"path": r[PATH], "top_k": [{"label": t["label"], "probability": round(t["probability"], 6)}
                                    for t in (r["top_k"] or [])],
         "error": r["error"]}
        for r in rows
    ], _classify_summary)
    return 0


def _classify_summary(rows: list[dict[str, Any]]) -> Summary:
    return Summary(
        f"top classes of {len(rows)} images (first rows by path; --out writes them all)",
        [(row["path"], row["error"] or ", ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top_k"]))
         for row in rows],
    )


def _demo(args: argparse.Namespace) -> int:
    from sparkvision.evaluation.metrics import evaluate_predictions
    from sparkvision.inference.predict import predict
    from sparkvision.io.builtin import find_demo_data

    data = find_demo_data()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir, predictions = work / "model", work / "predictions"
    log.info("demo: fitting on %s, predicting %s; outputs under %s", data / "train", data / "val", work)
    spark = spark_from_args(args)
    args.overwrite = True
    fitted = _fit_report(spark, args, str(data / "train"), str(data / "val"), str(model_dir), TransferSettings())
    frame = read_source(spark, args, str(data / "val"), probe="header")
    summary = predict(spark, model_dir, frame, str(predictions), overwrite=True)
    result = evaluate_predictions(spark.read.parquet(str(predictions)), fitted["labels"])
    metrics_path = work / "metrics.json"
    metrics_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    emit({
        "train": str(data / "train"),
        "val": str(data / "val"),
        "model": str(model_dir),
        "predictions": str(predictions),
        "metrics_file": str(metrics_path),
        "predicted_rows": summary.rows,
        "errors": summary.errors,
        "validation": metrics_report(result.to_dict()),
        "next": f"sparkvision evaluate --predictions {predictions} --out {work / 'report'}",
    }, _demo_summary)
    return 0


def _demo_summary(r: dict[str, Any]) -> Summary:
    return Summary(
        f"demo: fitted on {r['train']}, predicted {r['val']}",
        [*_validation_facts(r["validation"]), ("model", r["model"]), ("predictions", r["predictions"]),
         ("metrics", r["metrics_file"])],
        [r["next"], f"sparkvision predict --model {r['model']} --input YOUR_PHOTOS --out PREDICTIONS"],
    )


def _add_common_model_options(parser: argparse.ArgumentParser, tta_default: str) -> None:
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help=f"images per ONNX Runtime call in a task (default {FeaturizeSettings.batch_size})")
    parser.add_argument("--tta", choices=["none", "flip"], default=None,
                        help="test-time augmentation: flip averages each image's outputs with its mirror image's, "
                        f"for twice the CNN work (default {tta_default})")


def register(subparsers: argparse._SubParsersAction, parents: dict[str, argparse.ArgumentParser]) -> None:
    common = [parents["spark"], parents["logging"]]
    defaults = TransferSettings()

    fit = subparsers.add_parser(
        "fit",
        parents=common,
        help="transfer learning: pretrained CNN features + an MLlib classifier, saved as a model directory",
        description="Featurize SRC with a pretrained backbone (ONNX Runtime inside Spark tasks), fit a "
        "StringIndexer and an MLlib classifier on the features, and save the whole fitted PipelineModel as a "
        "model directory (kind spark_pipeline). Prints validation metrics as JSON: accuracy and per-class "
        "precision/recall/F1. Without --val a stratified part of --train is held out.",
        epilog="Examples:\n"
        "  sparkvision fit --train ../shared/data/imagenette-mini/train --val ../shared/data/imagenette-mini/val "
        "--out models/imagenette\n"
        "  sparkvision fit --train photos/ --out models/photos --classifier mlp --grid\n"
        "  sparkvision fit --train photos/ --out models/photos --backbone efficientnet_lite2\n"
        "  sparkvision fit --train photos/ --out models/photos --backbone hog --pca 128\n"
        "  sparkvision fit --train photos/train --val photos/val --out models/photos --auto --finetune\n"
        "  sparkvision fit --train photos/ --out models/photos --backbone my_net.onnx --backbone-size 224 "
        "--backbone-norm imagenet\n"
        "  sparkvision fit --train fashion-mnist:train --per-class 500 --val fashion-mnist:test --out models/fmnist",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("--train", required=True, metavar="SRC",
                     help="labelled images: folder (class = sub-folder), dataset, URI or built-in name")
    fit.add_argument("--val", default=None, metavar="SRC", help="validation images (default: hold out part of --train)")
    fit.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing MODEL_DIR (atomically)")
    fit.add_argument("--classifier", choices=["logreg", "rf", "gbt", "mlp"], default=defaults.classifier,
                     help="logistic regression (default), random forest, one-vs-rest GBT, multilayer perceptron")
    fit.add_argument("--grid", action="store_true",
                     help="choose the classifier's parameters by k-fold cross-validation (features computed once); "
                     "logreg always does: regParam and standardization by CV on the cached features")
    fit.add_argument("--auto", action="store_true",
                     help="fit a head on every offline pretrained backbone ('sparkvision models'; or each of "
                     "--backbone A,B), the same selection as a plain fit for each, and keep the best by val "
                     "accuracy (ties to fewer GFLOPs; without val rows, by CV accuracy); states its cost first and "
                     "writes the comparison into the summary and the model card")
    fit.add_argument("--finetune", action="store_true",
                     help="with --auto: also fine-tune (train --preset finetune) on the same train/val rows and "
                     "keep it if it wins (the model directory is then train's)")
    fit.add_argument("--folds", type=int, default=None,
                     help=f"folds of the cross-validation (default {defaults.grid_folds})")
    fit.add_argument("--output", choices=["features", "logits"], default=None,
                     help="backbone output to train on (default: pooled features)")
    fit.add_argument("--pca", type=int, default=None, metavar="K",
                     help="reduce the features to their K principal components (an MLlib PCA stage fitted on the "
                     "training features and saved in the pipeline) before the classifier; K from 1 to the "
                     "backbone's feature count (default: no PCA)")
    add_int8_options(fit, "quantise the backbone to int8 (calibrated on training images) and keep it if the "
                      "validation accuracy stays within --int8-max-drop points of fp32's; otherwise keep fp32 and "
                      "say why (both figures go into the model card); predict, serve and tile then run it")
    fit.add_argument("--val-fraction", type=float, default=None, metavar="F",
                     help=f"share of each class held out when --val is absent (default {defaults.val_fraction})")
    fit.add_argument("--per-class", type=int, default=None, metavar="N",
                     help="use at most N training images per class (seeded choice), for large sets")
    fit.add_argument("--val-per-class", type=int, default=None, metavar="N",
                     help="use at most N validation images per class from --val")
    fit.add_argument("--seed", type=int, default=None, help=f"seed of splits and classifiers (default {defaults.seed})")
    add_backbone_options(fit, None, f"the frozen network whose features the classifier learns from (default "
                         f"{defaults.model_name}); the model directory records it, so predict and serve need "
                         "no flag")
    _add_common_model_options(fit, "none; the model keeps it for predict and serve")
    add_source_options(fit)
    fit.set_defaults(handler=_fit)

    pred = subparsers.add_parser(
        "predict",
        parents=common,
        help="batch prediction with any model directory into Parquet (every input row exactly once)",
        description="Run MODEL_DIR (kind spark_pipeline from 'fit', or onnx from 'train'/'optimize') on SRC and "
        "(for a detector, see 'sparkvision detect': boxes instead of prediction/probability) "
        "write Parquet with path, label (true class or null), prediction, probability (array<double> in the "
        "model card's labels order, see MODEL_DIR/labels.txt) and error. Bad images get an error, never a "
        "failed job. The output is checked to hold every input row exactly once, then moved into place.",
        epilog="Examples:\n  sparkvision predict --model models/imagenette --input new_photos/ --out predictions/today\n"
        "  sparkvision predict --model models/imagenette --input incoming/ --out predictions/all --incremental\n"
        "  sparkvision predict --model models/imagenette --input incoming/ --out predictions/live --stream \\\n"
        "      --checkpoint checkpoints/live --trigger processing-time=10s",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pred.add_argument("--model", required=True, metavar="MODEL_DIR", help="a sparkvision model directory")
    pred.add_argument("--input", required=True, metavar="SRC", help="images to classify")
    pred.add_argument("--out", required=True, metavar="PREDICTIONS", help="output Parquet directory (any Hadoop URI)")
    pred.add_argument("--overwrite", action="store_true", help="replace an existing output (atomically)")
    add_int8_options(pred, "run an fp32 classifier quantised to int8 if it holds up: a sample of SRC calibrates it "
                      "and other rows judge it against fp32 (their labels, else top-1 agreement); graph and verdict "
                      "are cached by model digest; a refused int8 predicts in fp32 and says why")
    appending = pred.add_argument_group(
        "appending (continuous recognition)",
        "Both write PREDICTIONS as parts batch=N/ (one rename each) with source_key, model_version and "
        "predicted_at on every row.")
    appending.add_argument("--incremental", action="store_true",
                           help="predict only files this model version has not predicted into PREDICTIONS yet "
                           "(keyed by path, size and modification time; a rerun with nothing new writes nothing)")
    appending.add_argument("--hash", action="store_true",
                           help="with --incremental: key files by a SHA-256 of their bytes instead of size and time")
    appending.add_argument("--stream", action="store_true",
                           help="Structured Streaming: keep predicting new files as they land under SRC, exactly "
                           "once across restarts")
    appending.add_argument("--checkpoint", default=None, metavar="DIR",
                           help="with --stream: Spark's checkpoint (which files each micro-batch holds)")
    appending.add_argument("--trigger", default="available-now",
                           help="with --stream: processing-time=10s (run until Ctrl-C/SIGTERM), once, or "
                           "available-now (default: everything present now, then stop)")
    appending.add_argument("--max-files-per-trigger", type=int, default=None, metavar="N",
                           help="with --stream: at most N files per micro-batch")
    appending.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                           help="with --stream: stop after this long (between micro-batches)")
    _add_common_model_options(pred, "what the model was fitted with")
    add_detection_options(pred)
    add_source_options(pred)
    pred.set_defaults(handler=_predict)

    cls = subparsers.add_parser(
        "classify",
        parents=common,
        help="ImageNet top-k labels with a pretrained model, no training",
        description="Top-k ImageNet classes and probabilities for every image of SRC. Prints JSON (the first "
        "--limit rows by path) or, with --out, writes Parquet (path, prediction, top_k, error).",
        epilog="Examples:\n  sparkvision classify --input photos/ --top-k 5\n"
        "  sparkvision classify --input photos/ --backbone efficientnet_lite2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cls.add_argument("--input", required=True, metavar="SRC", help="images to classify")
    cls.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    cls.add_argument("--limit", type=int, default=100, help="rows printed without --out (default 100)")
    cls.add_argument("--out", default=None, help="write every row to this Parquet directory instead of printing")
    cls.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_backbone_options(cls, FeaturizeSettings.model_name, "the classifying network (an ONNX file needs 'labels' "
                         "in its sidecar)")
    _add_common_model_options(cls, "none")
    add_source_options(cls)
    cls.set_defaults(handler=_classify)

    demo = subparsers.add_parser(
        "demo",
        parents=common,
        help="the main job on shipped data: fit on imagenette-mini/train, predict its val split, print metrics",
        description="Fit the default transfer-learning pipeline on ../shared/data/imagenette-mini/train (found "
        "next to the repository, or under $SPARKVISION_SHARED_DATA), predict imagenette-mini/val, evaluate, "
        "and print the metrics and where the model, predictions and metrics.json are.",
    )
    demo.add_argument("--workdir", default="sparkvision-demo",
                      help="where the demo writes its outputs, replaced on each run (default ./sparkvision-demo)")
    add_source_options(demo)
    demo.set_defaults(handler=_demo, classifier=defaults.classifier, grid=False, per_class=None,
                      val_per_class=None, batch_size=None)
