"""``models``: the registered models and what each costs; and the ``--backbone`` options of the model commands."""

from __future__ import annotations

import argparse
from typing import Any

from sparkvision.cli.common import Summary, UsageError, emit


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH in pixels, got {text!r}")
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def add_backbone_options(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """``--backbone NAME|FILE.onnx|hf:DIR_OR_ID`` (``--model-name`` is its old name) and an ONNX file's preprocessing."""
    from sparkvision.config import NORMALIZATION_PRESETS

    group = parser.add_argument_group("backbone")
    group.add_argument("--backbone", "--model-name", dest="backbone", default=default,
                       metavar="NAME|FILE.onnx|hf:DIR_OR_ID",
                       help="a registered model ('sparkvision models' lists them), your own ONNX file (its "
                       "preprocessing declared by a sidecar FILE.json or the two options below), or hf:DIR_OR_ID, a "
                       "Hugging Face transformers vision model (a save_pretrained directory or a hub id in the HF "
                       "cache; exported to ONNX once, with its processor's preprocessing; needs "
                       f"pip install 'sparkvision[hf]'): {what}"
                       + (f" (default {default})" if default else ""))
    group.add_argument("--backbone-size", type=_size, default=None, metavar="SIZE",
                       help="an ONNX backbone's input size, e.g. 224 or 240x320 (default: its sidecar's, else "
                       "the graph's fixed input size)")
    group.add_argument("--backbone-norm", choices=sorted(NORMALIZATION_PRESETS), default=None,
                       help="an ONNX backbone's pixel normalisation: imagenet mean/std, inception (x/127.5 - 1) "
                       "or unit (x/255) (default: its sidecar's)")


def backbone_from_args(args: argparse.Namespace, needs_labels: bool = False) -> str | None:
    """The registered name of ``--backbone`` (an ONNX file or a Hugging Face model is registered now),
    or None when not given. ``needs_labels``: a backbone that names no classes is a usage error."""
    from sparkvision.models.backbone import (
        UndeclaredPreprocessing,
        is_hf_backbone,
        is_onnx_file,
        resolve_backbone,
    )

    declared = args.backbone_size is not None or args.backbone_norm is not None
    if declared and (args.backbone is None or not is_onnx_file(args.backbone)):
        raise UsageError("--backbone-size and --backbone-norm declare the preprocessing of --backbone FILE.onnx; "
                         "a registered model has its own")
    if args.backbone is None:
        return None
    from sparkvision.models.huggingface import HFBackboneError

    try:
        name = resolve_backbone(args.backbone, size=args.backbone_size, norm=args.backbone_norm)
    except KeyError as exc:  # an unknown name: the registry's message lists the known ones
        raise UsageError(exc.args[0]) from None
    except (UndeclaredPreprocessing, HFBackboneError) as exc:
        raise UsageError(str(exc)) from None
    if needs_labels and not _labels_of(name):
        if is_hf_backbone(args.backbone):
            raise UsageError(f"{args.backbone} has no image-classification head (a ...ForImageClassification with "
                             "id2label): classify needs a model with one; 'sparkvision fit --backbone "
                             f"{args.backbone}' trains a classifier on its features")
        raise UsageError(f"{args.backbone} names no classes: classify needs a model with labels (an ONNX file "
                         "declares them as 'labels' in its sidecar)")
    return name


def _labels_of(name: str) -> tuple[str, ...] | None:
    from sparkvision.models import get_spec

    return get_spec(name).labels


def _models(args: argparse.Namespace) -> int:
    from sparkvision.models.catalog import catalog

    emit(catalog(), _models_summary)
    return 0


def _models_summary(rows: list[dict[str, Any]]) -> Summary:
    def line(r: dict[str, Any]) -> str:
        height, width = r["input_size"]
        params = f"{r['params'] / 1e6:.2f} M" if r["params"] is not None else "-"
        gflops = f"{r['gflops']:.3g}" if r["gflops"] is not None else "-"
        shape = f"{height}x{width}x{r['channels']}"
        return (f"{r['task']:<9} {shape:<11} {r['num_features'] or '-':<8} "
                f"{r['num_classes']:<7} {params:>8} {gflops:>7}  {'yes' if r['pretrained'] else 'no'}")

    header = f"{'task':<9} {'input':<11} {'features':<8} {'classes':<7} {'params':>8} {'GFLOPs':>7}  pretrained"
    return Summary(
        f"{len(rows)} registered models (GFLOPs: per image at its input size, 2 FLOPs per multiply-add)",
        [("name", header), *((r["name"], line(r)) for r in rows)],
        ["sparkvision fit --backbone NAME --train SRC --out MODEL_DIR",
         "sparkvision classify --backbone NAME --input SRC"],
    )


def register(subparsers: argparse._SubParsersAction, parents: dict[str, argparse.ArgumentParser]) -> None:
    models = subparsers.add_parser(
        "models",
        parents=[parents["logging"]],
        help="the registered models (backbones): task, input size, feature size, parameters, GFLOPs",
        description="List every registered model: its task, input size, feature and class counts, parameter "
        "count and GFLOPs per image at its input size (FlopCounterMode on the torch model, 2 FLOPs per "
        "multiply-add; computed once and cached). Any of them goes to --backbone of fit, classify and train; "
        "your own ONNX file goes there too (see 'sparkvision fit --help').",
        epilog="Example:\n  sparkvision models\n  sparkvision models --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.set_defaults(handler=_models)
