"""``train``: data-parallel CNN training through Spark's TorchDistributor, into a model directory."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from sparkvision.cli.common import Summary, UsageError, add_int8_options, emit, int8_facts, spark_from_args
from sparkvision.cli.data import add_source_options, decode_settings, read_source
from sparkvision.config.training import (
    ARCH_DEFAULTS,
    PRESETS,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    ScalingConfig,
    ScheduleConfig,
    TrainConfig,
    apply_overrides,
    defaults_for,
    preset,
)
from sparkvision.config.validation import literal_values
from sparkvision.models.backbone import is_hf_backbone, is_onnx_file

log = logging.getLogger(__name__)



class _RegisteredModels:
    """``--arch`` choices: the registry's models, listed only when asked (the families import torch)."""

    def __contains__(self, name: object) -> bool:
        from sparkvision.models import list_models

        # An ONNX file or a Hugging Face model passes here so that _train can say why it cannot be trained.
        return name in list_models() or (isinstance(name, str) and (is_onnx_file(name) or is_hf_backbone(name)))

    def __iter__(self):
        from sparkvision.models import list_models

        return iter(list_models())


def _features_only(arch: str) -> bool:
    """A registered model without classes or weights (HOG), which train cannot fine-tune."""
    from sparkvision.models import get_spec

    spec = get_spec(arch)
    return spec.num_classes == 0 and not spec.needs_weights


def _pair(text: str) -> tuple[float, float]:
    parts = [float(p) for p in text.replace("x", ",").split(",")]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers like 0.3,1.0, got {text!r}")
    return parts[0], parts[1]


def _size(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH, got {text!r}")
    return parts[0], parts[1]


def _class_weights(text: str) -> str | tuple[float, ...]:
    if text in ("none", "balanced"):
        return text
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--class-weights takes none, balanced or w1,w2,..., got {text!r}") from exc


#: CLI option dest -> (config section or None for top level, field).
_FLAG_FIELDS: dict[str, tuple[str | None, str]] = {
    "epochs": (None, "epochs"), "batch_size": (None, "batch_size"), "seed": (None, "seed"),
    "patience": (None, "patience"), "monitor": (None, "monitor"), "export": (None, "export"),
    "arch": ("model", "arch"), "pretrained": ("model", "pretrained"), "unfreeze_stages": ("model", "unfreeze_stages"),
    "head_epochs": ("model", "head_epochs"), "backbone_lr_mult": ("model", "backbone_lr_mult"), "dropout": ("model", "dropout"),
    "image_size": ("model", "image_size"), "channels": ("model", "channels"), "normalize": ("model", "normalize"),
    "optimizer": ("optimizer", "name"), "lr": ("optimizer", "lr"), "momentum": ("optimizer", "momentum"),
    "nesterov": ("optimizer", "nesterov"), "weight_decay": ("optimizer", "weight_decay"),
    "grad_clip": ("optimizer", "grad_clip_norm"),
    "schedule": ("schedule", "name"), "lr_decay": ("schedule", "decay"), "step_epochs": ("schedule", "step_epochs"),
    "gamma": ("schedule", "gamma"), "warmup_epochs": ("schedule", "warmup_epochs"),
    "min_lr_ratio": ("schedule", "min_lr_ratio"), "pct_start": ("schedule", "pct_start"),
    "loss": ("loss", "name"), "label_smoothing": ("loss", "label_smoothing"), "focal_gamma": ("loss", "focal_gamma"),
    "class_weights": ("loss", "class_weights"),
    "crop": ("augment", "crop_prob"), "crop_scale": ("augment", "crop_scale"), "hflip": ("augment", "hflip_prob"),
    "rotate": ("augment", "rotation_degrees"), "brightness": ("augment", "brightness"),
    "contrast": ("augment", "contrast"), "saturation": ("augment", "saturation"), "blur": ("augment", "blur_prob"),
    "erase": ("augment", "erase_prob"), "mixup": ("augment", "mixup_alpha"), "cutmix": ("augment", "cutmix_alpha"),
    "workers": ("scaling", "workers"), "gpu": ("scaling", "use_gpu"), "precision": ("scaling", "precision"),
    "threads_per_worker": ("scaling", "threads_per_worker"), "local_mode": ("scaling", "local_mode"),
    "keep_last": ("checkpoint", "keep_last"), "resume": ("checkpoint", "resume"),
    "val_fraction": ("data", "val_fraction"), "test_fraction": ("data", "test_fraction"),
    "work_dir": ("data", "work_dir"), "keep_work": ("data", "keep_work"),
    "eval_batch_size": ("data", "eval_batch_size"),
}


_ALL_STAGES = "all"


def _stages(text: str) -> int | str:
    if text == _ALL_STAGES:
        return text
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--unfreeze-stages takes a number or 'all', got {text!r}") from exc


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave as flags, nested as :func:`apply_overrides` takes them."""
    overrides: dict[str, Any] = {}
    for dest, (section, name) in _FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if value == _ALL_STAGES:
            value = None  # the config's "every stage trains"
        if section is None:
            overrides[name] = value
        else:
            overrides.setdefault(section, {})[name] = value
    return overrides


def recipe_flags(overrides: dict[str, Any]) -> str:
    """``overrides`` as the ``train`` flags that give them (the inverse of :func:`flag_overrides`)."""
    flag = {field: dest for dest, field in _FLAG_FIELDS.items()}
    words: list[str] = []
    for key, value in overrides.items():
        for name, v in (value.items() if isinstance(value, dict) else [(key, value)]):
            option = "--" + flag[(key if isinstance(value, dict) else None, name)].replace("_", "-")
            if isinstance(v, bool):
                words.append(option if v else option.replace("--", "--no-", 1))
            elif v is None and name == "unfreeze_stages":
                words += [option, _ALL_STAGES]
            else:
                words += [option, ",".join(map(_number, v)) if isinstance(v, tuple) else _number(v)]
    return " ".join(words)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The architecture's defaults (or the preset), then every flag the user gave."""
    name = args.preset or ("fcos-detect" if getattr(args, "task", "classify") == "detect" else None)
    base = preset(name) if name else defaults_for(getattr(args, "arch", None) or ModelConfig.arch)
    return apply_overrides(base, flag_overrides(args))


def _train(args: argparse.Namespace) -> int:
    from sparkvision.training.distributor import fit

    if args.arch is not None and is_onnx_file(args.arch):
        raise UsageError(f"{args.arch} is an ONNX graph: train fine-tunes a registered torch model (see 'sparkvision "
                         "models'); use an ONNX backbone's frozen features with 'sparkvision fit --backbone'")
    if args.arch is not None and is_hf_backbone(args.arch):
        raise UsageError(f"train fine-tunes registered torch models only; use {args.arch}'s frozen features with "
                         f"'sparkvision fit --backbone {args.arch}'")
    if args.arch is not None and _features_only(args.arch):
        raise UsageError(f"{args.arch} gives hand-designed features only, with nothing to train and no classifier; "
                         f"fit one on them with 'sparkvision fit --backbone {args.arch}'")
    if args.int8 and args.task == "detect":
        raise UsageError("--int8 guards a classifier's accuracy; a detector is trained in fp32 (quantise it with "
                         "'sparkvision optimize --int8' and judge its boxes yourself)")
    if args.int8_max_drop is not None and not args.int8:
        raise UsageError("--int8-max-drop applies to --int8")
    config = config_from_args(args)
    if args.val is None and config.data.val_fraction == 0:
        log.warning("no validation data (--val or --val-fraction): no early stopping, the last epoch is exported")
    spark = spark_from_args(args)
    result = fit(
        spark, config, train=args.train, out=args.out, val=args.val, test=args.test, name=args.name,
        overwrite=args.overwrite, decode=decode_settings(args),
        source_reader=lambda src: read_source(spark, args, src, probe="header"), task=args.task,
    )
    if args.int8:
        result.metrics["int8"] = _int8(spark, args, result.out)
    emit({"out": result.out, "labels": result.labels, "metrics": result.metrics,
          "curves": [{k: h[k] for k in h if k != "epoch_seconds"} for h in result.history]}, _train_summary)
    return 0


def _int8(spark, args: argparse.Namespace, model_dir: str) -> dict[str, Any]:
    """``train --int8``: calibrate on training images, judge on --val (else on training-source rows after the
    calibration ones), and keep int8 in model.onnx only if the guard passes."""
    from sparkvision.config import MeasureSettings, QuantizeSettings, TransferSettings
    from sparkvision.deploy.int8 import quantize_model_dir
    from sparkvision.deploy.measure import sample_rows

    quantize, measure = QuantizeSettings(), MeasureSettings()
    train = read_source(spark, args, args.train, probe="header")
    calibration = sample_rows(train, quantize.calibration_images, quantize.seed)
    if args.val:
        val = sample_rows(read_source(spark, args, args.val, probe="header"), measure.val_images, measure.seed)
    else:
        log.warning("--int8 without --val: judged on rows of --train after the calibration ones")
        val = sample_rows(train, measure.val_images, quantize.seed, offset=len(calibration))
    max_drop = args.int8_max_drop if args.int8_max_drop is not None else TransferSettings.int8_max_drop
    return quantize_model_dir(model_dir, calibration, val, max_drop, quantize).to_dict()


def _train_summary(r: dict[str, Any]) -> Summary:
    m = r["metrics"]
    facts = [(f"{part} top-1 / top-5", f"{m[part + '_top1']:.4f} / {m[part + '_top5']:.4f} on {m[part + '_count']:,} "
              f"images (loss {m[part + '_loss']:.4f})")
             for part in ("val", "test") if m.get(part + "_top1") is not None]
    facts += [("epochs", f"{m.get('epochs_run')} run, epoch {m.get('exported_epoch')} exported"
               + (" (stopped early)" if m.get("stopped_early") else "")),
              ("train top-1", m.get("train_top1")), ("classes", len(r["labels"])), *int8_facts(m.get("int8"))]
    return Summary(f"trained a model in {r['out']}", facts, [
        f"sparkvision predict --model {r['out']} --input SRC --out PREDICTIONS",
        f"sparkvision serve --model {r['out']}",
    ])


def register(subparsers: argparse._SubParsersAction, parents: dict[str, argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "train",
        parents=[parents["spark"], parents["logging"]],
        help="train or fine-tune a CNN, data-parallel through Spark's TorchDistributor",
        description="Train ARCH on SRC with K data-parallel workers (Spark's TorchDistributor: processes on the "
        "driver for a local master, barrier tasks on executors otherwise). Every rank reads its own shard of a "
        "Parquet dataset; sources that are not datasets yet are written to one by Spark first. Validates every "
        "epoch, checkpoints every epoch (--resume continues a killed run to the same result), and writes a model "
        "directory (model.onnx, labels, preprocessing, metrics, curves.csv, tensorboard/, checkpoints/) that "
        "'sparkvision predict' and 'evaluate' take like any other model.",
        epilog="Examples:\n"
        "  sparkvision train --preset bigdl-lenet --train fashion-mnist:train --val fashion-mnist:test --out m/lenet\n"
        "  sparkvision train --arch smallcnn --train mnist-5k --val-fraction 0.1 --test-fraction 0.2 --epochs 15 "
        "--workers 2 --out m/cnn\n"
        "  sparkvision train --backbone efficientnet_lite1 --unfreeze-stages 3 --train photos/train --val photos/val "
        "--epochs 8 --batch-size 32 --optimizer adamw --lr 1e-3 --crop 1 --hflip 0.5 --out m/effnet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data and output")
    data.add_argument("--train", required=True, metavar="SRC",
                      help="training images: built-in name, dataset, folder (class = sub-folder) or URI")
    data.add_argument("--val", default=None, metavar="SRC", help="validation images, evaluated every epoch")
    data.add_argument("--test", default=None, metavar="SRC", help="test images, evaluated once with the exported model")
    data.add_argument("--val-fraction", type=float, default=None, metavar="F",
                      help="carve a stratified validation part out of --train (when --val is not given)")
    data.add_argument("--test-fraction", type=float, default=None, metavar="F",
                      help="carve a stratified test part out of --train (when --test is not given)")
    data.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    data.add_argument("--name", default=None, help="model name in its card (default: the directory's name)")
    data.add_argument("--overwrite", action="store_true", help="replace an existing MODEL_DIR")
    data.add_argument("--resume", action="store_true", default=None,
                      help="continue from the newest checkpoint in MODEL_DIR/checkpoints (same settings)")
    data.add_argument("--work-dir", default=None,
                      help="where sources are written as datasets for the ranks (default MODEL_DIR/.work; on a "
                      "cluster, a URI every executor can read)")
    data.add_argument("--keep-work", action="store_true", default=None, help="keep those datasets afterwards")
    data.add_argument("--keep-last", type=int, default=None, metavar="N", help="checkpoints kept (default 2)")
    add_source_options(parser)

    run = parser.add_argument_group("training")
    run.add_argument("--preset", choices=sorted(PRESETS), default=None,
                     help="a named recipe; finetune = a pretrained backbone (efficientnet_lite0, or --backbone) fine-tuned: "
                     "last 3 stages + new head, AdamW, cosine, crops and flips, best epoch by val top-1; "
                     "bigdl-lenet = lenet5, SGD lr 0.4, decay 0.0002, batch 2048, 20 epochs, "
                     "data normalisation. Flags given next to it win")
    run.add_argument("--backbone", "--arch", dest="arch", choices=_RegisteredModels(), default=None, metavar="NAME",
                     help="the registered network to train or fine-tune: %(choices)s (default lenet5; --arch is its "
                     "other name). Without --preset, a network with its own recipe trains with it, under the flags "
                     "given: " + "; ".join(f"{arch}: {recipe_flags(recipe)}" for arch, recipe in ARCH_DEFAULTS.items()))
    run.add_argument("--epochs", type=int, default=None, help="epochs (default 10, or --arch's recipe)")
    run.add_argument("--batch-size", type=int, default=None,
                     help="global batch size, split evenly over the workers (default 128, or --arch's recipe)")
    run.add_argument("--workers", type=int, default=None, help="data-parallel ranks (default 1)")
    run.add_argument("--seed", type=int, default=None, help="seed for weights, data order and augmentation (42)")
    run.add_argument("--patience", type=int, default=None, help="early stopping: epochs without improvement")
    run.add_argument("--task", choices=["classify", "detect"], default="classify",
                     help="what the network learns: one label per image, or boxes (VOC/COCO sources; defaults "
                     "to --preset fcos-detect)")
    run.add_argument("--monitor", choices=literal_values(TrainConfig, "monitor"), default=None,
                     help="metric for best-model tracking and early stopping (default val_loss)")
    run.add_argument("--export", choices=literal_values(TrainConfig, "export"), default=None,
                     help="export the best epoch's weights or the last's (default best)")
    run.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                     help="train on GPUs with nccl (default: when torch sees CUDA)")
    run.add_argument("--precision", choices=literal_values(ScalingConfig, "precision"), default=None,
                     help="mixed precision of the training step: bf16 autocast, or fp32 (default auto: bf16 on a "
                     "GPU that supports it, else fp32)")
    run.add_argument("--threads-per-worker", type=int, default=None,
                     help="torch threads per rank (default: cores / workers locally, spark.task.cpus on a cluster)")
    run.add_argument("--local-mode", action=argparse.BooleanOptionalAction, default=None,
                     help="ranks as processes on the driver (default for a local master) or as executor tasks")

    model = parser.add_argument_group("model")
    model.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                       help="start from the registry's pretrained weights (default: when there are any)")
    model.add_argument("--unfreeze-stages", type=_stages, default=None, metavar="N|all",
                       help="fine-tuning: train only the last N backbone stages and the new head (0 = head only; "
                       "default all, or the preset's)")
    model.add_argument("--head-epochs", type=int, default=None, metavar="N",
                       help="fine-tuning warm-up: the first N epochs train the new head only, then the unfrozen "
                       "stages join (default 0)")
    model.add_argument("--backbone-lr-mult", type=float, default=None,
                       help="learning rate of pretrained layers relative to the head (default 0.1)")
    model.add_argument("--dropout", type=float, default=None, help="dropout of the architecture, where it has one")
    model.add_argument("--image-size", type=_size, default=None, metavar="SIZE",
                       help="input size, e.g. 64 or 48x64 (default: the architecture's)")
    model.add_argument("--channels", type=int, choices=literal_values(ModelConfig, "channels"), default=None, help="input channels")
    model.add_argument("--normalize", choices=literal_values(ModelConfig, "normalize"), default=None,
                       help="mean/std of the architecture, or of the training data (written to the model card); default "
                       "model, or --arch's recipe")

    opt = parser.add_argument_group("optimiser and schedule")
    opt.add_argument("--optimizer", choices=literal_values(OptimizerConfig, "name"), default=None, help="default sgd, or --arch's recipe")
    opt.add_argument("--lr", type=float, default=None, help="learning rate (peak for one-cycle; default 0.05, or --arch's recipe)")
    opt.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    opt.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    opt.add_argument("--weight-decay", type=float, default=None, help="default 0, or --arch's recipe")
    opt.add_argument("--grad-clip", type=float, default=None, metavar="NORM", help="clip the gradient norm")
    opt.add_argument("--schedule", choices=literal_values(ScheduleConfig, "name"), default=None,
                     help="decay = lr / (1 + lr_decay * iteration), BigDL's; default constant, or --arch's recipe")
    opt.add_argument("--lr-decay", type=float, default=None, help="for --schedule decay (bigdl-lenet: 0.0002)")
    opt.add_argument("--step-epochs", type=int, default=None, help="for --schedule step: epochs per step")
    opt.add_argument("--gamma", type=float, default=None, help="for --schedule step: factor per step")
    opt.add_argument("--warmup-epochs", type=float, default=None, help="for --schedule cosine: linear warm-up")
    opt.add_argument("--min-lr-ratio", type=float, default=None, help="for --schedule cosine: final lr / lr")
    opt.add_argument("--pct-start", type=float, default=None, help="for --schedule onecycle: rising share")

    loss = parser.add_argument_group("loss")
    loss.add_argument("--loss", choices=literal_values(LossConfig, "name"), default=None)
    loss.add_argument("--label-smoothing", type=float, default=None)
    loss.add_argument("--focal-gamma", type=float, default=None)
    loss.add_argument("--class-weights", type=_class_weights, default=None, metavar="none|balanced|W1,W2,...",
                      help="per-class loss weights for imbalanced data")

    aug = parser.add_argument_group("augmentation (on the workers, seeded; off by default except in --arch's recipe)")
    aug.add_argument("--crop", type=float, default=None, metavar="P", help="random resized crop probability")
    aug.add_argument("--crop-scale", type=_pair, default=None, metavar="MIN,MAX", help="crop area range (0.35,1)")
    aug.add_argument("--hflip", type=float, default=None, metavar="P", help="horizontal flip probability")
    aug.add_argument("--rotate", type=float, default=None, metavar="DEG", help="random rotation in [-DEG, DEG]")
    aug.add_argument("--brightness", type=float, default=None, metavar="S", help="brightness factor in [1-S, 1+S]")
    aug.add_argument("--contrast", type=float, default=None, metavar="S", help="contrast factor in [1-S, 1+S]")
    aug.add_argument("--saturation", type=float, default=None, metavar="S", help="saturation factor in [1-S, 1+S]")
    aug.add_argument("--blur", type=float, default=None, metavar="P", help="Gaussian blur probability")
    aug.add_argument("--erase", type=float, default=None, metavar="P", help="random erasing (cutout) probability")
    aug.add_argument("--mixup", type=float, default=None, metavar="ALPHA", help="MixUp Beta(alpha, alpha)")
    aug.add_argument("--cutmix", type=float, default=None, metavar="ALPHA", help="CutMix Beta(alpha, alpha)")
    aug.add_argument("--eval-batch-size", type=int, default=None, help=argparse.SUPPRESS)
    add_int8_options(parser, "after training, quantise model.onnx to int8 (calibrated on training images) and keep "
                     "it if its accuracy on --val stays within --int8-max-drop points of fp32's; otherwise keep "
                     "fp32 and say why (both figures go into the model card)")
    parser.set_defaults(handler=_train)
