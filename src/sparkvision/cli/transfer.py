"""``fit``, ``predict``, ``classify`` and ``demo``: transfer learning on Spark, the main job."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from sparkvision.cli.common import emit, spark_from_args
from sparkvision.cli.data import add_source_options, read_source
from sparkvision.cli.detect import add_detection_options, detection_settings
from sparkvision.config import FeaturizeSettings, TransferSettings
from sparkvision.io.schema import LABEL, PATH
from sparkvision.progress import spark_progress

log = logging.getLogger(__name__)

DEMO_DATA = "imagenette-mini"


def per_class_sample(frame: DataFrame, per_class: int, seed: int) -> DataFrame:
    """At most ``per_class`` rows of each label, chosen by a seeded hash of the path."""
    order = Window.partitionBy(LABEL).orderBy(F.xxhash64(F.col(PATH), F.lit(seed)), F.col(PATH))
    return frame.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= per_class).drop("_rank")


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
    for flag, name in (("model_name", "model_name"), ("output", "output"), ("seed", "seed"),
                       ("val_fraction", "val_fraction"), ("batch_size", "batch_size"), ("folds", "grid_folds")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[name] = value
    return replace(TransferSettings(), **overrides)


def run_fit(spark, args: argparse.Namespace, train_src: str, val_src: str | None, out: str,
            settings: TransferSettings) -> dict[str, Any]:
    from sparkvision.io.splits import SPLIT, assign_splits
    from sparkvision.ml.classifier import fit_transfer

    frame = read_source(spark, args, train_src, probe="header")
    if getattr(args, "per_class", None):
        frame = per_class_sample(frame, args.per_class, settings.seed)
    if val_src:
        train, val = frame, read_source(spark, args, val_src, probe="header")
        if getattr(args, "val_per_class", None):
            val = per_class_sample(val, args.val_per_class, settings.seed)
        split = {"train": train_src, "val": val_src}
    else:
        assigned = assign_splits(frame, {"train": 1 - settings.val_fraction, "val": settings.val_fraction},
                                 seed=settings.seed)
        train = assigned.where(F.col(SPLIT) == "train").drop(SPLIT)
        val = assigned.where(F.col(SPLIT) == "val").drop(SPLIT)
        split = {"train": train_src, "val": f"stratified {settings.val_fraction:.0%} of {train_src} (seed {settings.seed})"}
    provenance = {"train_source": train_src, "val_source": split["val"]}
    if getattr(args, "per_class", None):
        provenance["train_per_class"] = args.per_class
    with spark_progress(spark, "fit"):
        model = fit_transfer(train, val, settings, provenance=provenance)
    path = model.save(out, overwrite=args.overwrite)
    return {
        "model": str(path),
        "labels": model.labels,
        "classifier": settings.classifier,
        "classifier_params": model.classifier_params,
        "grid": model.grid_results,
        "validation": metrics_report(model.metrics),
    }


def _fit(args: argparse.Namespace) -> int:
    spark = spark_from_args(args)
    emit(run_fit(spark, args, args.train, args.val, args.out, _settings(args)))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from sparkvision.inference.predict import predict

    spark = spark_from_args(args)
    frame = read_source(spark, args, args.input, probe="header")
    summary = predict(spark, args.model, frame, args.out, overwrite=args.overwrite, batch_size=args.batch_size,
                      detection=detection_settings(args))
    emit(summary.to_dict())
    return 0


def _classify(args: argparse.Namespace) -> int:
    from sparkvision.ml.predictor import ImagePredictor

    spark = spark_from_args(args)
    frame = read_source(spark, args, args.input, probe="header")
    if not args.out:
        frame = frame.orderBy(PATH).limit(args.limit)  # only the printed rows go through the model
    predictor = ImagePredictor(modelName=args.model_name, topK=args.top_k, probabilityCol="",
                               batchSize=args.batch_size or FeaturizeSettings.batch_size)
    result = predictor.transform(frame).select(PATH, "prediction", "top_k", "error")
    if args.out:
        from sparkvision import storage

        with storage.atomic_dir(args.out, spark, overwrite=args.overwrite) as staging, \
                spark_progress(spark, "classify"):
            result.write.parquet(staging)
        written = spark.read.parquet(args.out)
        emit({"out": args.out, "rows": written.count(), "errors": written.where(F.col("error").isNotNull()).count()})
        return 0
    with spark_progress(spark, "classify"):
        rows = result.orderBy(PATH).collect()
    emit([
        {"path": r[PATH], "top_k": [{"label": t["label"], "probability": round(t["probability"], 6)}
                                    for t in (r["top_k"] or [])],
         "error": r["error"]}
        for r in rows
    ])
    return 0


def find_demo_data() -> Path:
    """imagenette-mini next to the repository (``../shared/data``), wherever the command runs from."""
    import sparkvision

    roots = []
    if os.environ.get("SPARKVISION_SHARED_DATA"):
        roots.append(Path(os.environ["SPARKVISION_SHARED_DATA"]))
    repo = Path(sparkvision.__file__).resolve().parents[2]  # src/sparkvision/__init__.py -> repository root
    roots += [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    for root in roots:
        candidate = root / DEMO_DATA
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    looked = ", ".join(str(r / DEMO_DATA) for r in roots)
    raise FileNotFoundError(
        f"the demo needs {DEMO_DATA}/train and {DEMO_DATA}/val (real photos, one folder per class); looked in: "
        f"{looked}. Put the shared data next to the repository or set SPARKVISION_SHARED_DATA to the folder "
        f"that holds {DEMO_DATA}/."
    )


def _demo(args: argparse.Namespace) -> int:
    from sparkvision.evaluation.metrics import evaluate_predictions
    from sparkvision.inference.predict import predict

    data = find_demo_data()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir, predictions = work / "model", work / "predictions"
    log.info("demo: fitting on %s, predicting %s; outputs under %s", data / "train", data / "val", work)
    spark = spark_from_args(args)
    args.overwrite = True
    fitted = run_fit(spark, args, str(data / "train"), str(data / "val"), str(model_dir), TransferSettings())
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
    })
    return 0


def _add_common_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help=f"images per ONNX Runtime call in a task (default {FeaturizeSettings.batch_size})")


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
                     help="choose the classifier's parameters by k-fold cross-validation (features computed once)")
    fit.add_argument("--folds", type=int, default=None, help=f"folds of --grid (default {defaults.grid_folds})")
    fit.add_argument("--model-name", default=None, help=f"registered backbone (default {defaults.model_name})")
    fit.add_argument("--output", choices=["features", "logits"], default=None,
                     help="backbone output to train on (default: pooled features)")
    fit.add_argument("--val-fraction", type=float, default=None, metavar="F",
                     help=f"share of each class held out when --val is absent (default {defaults.val_fraction})")
    fit.add_argument("--per-class", type=int, default=None, metavar="N",
                     help="use at most N training images per class (seeded choice), for large sets")
    fit.add_argument("--val-per-class", type=int, default=None, metavar="N",
                     help="use at most N validation images per class from --val")
    fit.add_argument("--seed", type=int, default=None, help=f"seed of splits and classifiers (default {defaults.seed})")
    _add_common_model_options(fit)
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
        epilog="Example:\n  sparkvision predict --model models/imagenette --input new_photos/ --out predictions/today",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pred.add_argument("--model", required=True, metavar="MODEL_DIR", help="a sparkvision model directory")
    pred.add_argument("--input", required=True, metavar="SRC", help="images to classify")
    pred.add_argument("--out", required=True, metavar="PREDICTIONS", help="output Parquet directory (any Hadoop URI)")
    pred.add_argument("--overwrite", action="store_true", help="replace an existing output (atomically)")
    _add_common_model_options(pred)
    add_detection_options(pred)
    add_source_options(pred)
    pred.set_defaults(handler=_predict)

    cls = subparsers.add_parser(
        "classify",
        parents=common,
        help="ImageNet top-k labels with a pretrained model, no training",
        description="Top-k ImageNet classes and probabilities for every image of SRC. Prints JSON (the first "
        "--limit rows by path) or, with --out, writes Parquet (path, prediction, top_k, error).",
        epilog="Example:\n  sparkvision classify --input photos/ --top-k 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cls.add_argument("--input", required=True, metavar="SRC", help="images to classify")
    cls.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    cls.add_argument("--model-name", default=FeaturizeSettings.model_name,
                     help=f"registered model with labels (default {FeaturizeSettings.model_name})")
    cls.add_argument("--limit", type=int, default=100, help="rows printed without --out (default 100)")
    cls.add_argument("--out", default=None, help="write every row to this Parquet directory instead of printing")
    cls.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_common_model_options(cls)
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
