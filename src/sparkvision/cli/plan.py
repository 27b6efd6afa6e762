"""``sparkvision plan``: the cores and nodes a prediction job needs, from a measurement here."""

from __future__ import annotations

import argparse
from typing import Any

from sparkvision.cli.common import Summary, UsageError, emit, fmt, given, spark_from_args
from sparkvision.cli.data import ingest_settings
from sparkvision.config import PlanSettings


def _plan(args: argparse.Namespace) -> int:
    from sparkvision.inference.plan import plan, plan_sample
    from sparkvision.models.model_dir import load_card

    if args.input is None and (args.images is None or args.mean_bytes is None):
        raise UsageError("give --input SRC (a sample of your images), or --images N and --mean-bytes B to "
                         "measure photos made to that size")
    if args.hours <= 0:
        raise UsageError(f"--hours must be positive, got {args.hours}")
    if args.images is not None and args.images < 1:
        raise UsageError(f"--images must be at least 1, got {args.images}")
    try:
        settings = given(PlanSettings(), sample=args.sample, cores_per_node=args.cores_per_node,
                         read_gb_s=args.read_gb_s)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    load_card(args.model)  # a wrong MODEL_DIR fails here, before Spark starts
    spark = spark_from_args(args)
    sample = plan_sample(spark, args.input, settings, args.images, args.mean_bytes, kind=args.source_kind,
                         ingest=ingest_settings(args), glob=args.glob)
    emit(plan(spark, args.model, args.hours, sample, images=args.images, mean_bytes=args.mean_bytes,
              settings=settings, int8=args.int8, scratch=args.scratch), _plan_summary)
    return 0


def _needed_line(needed: dict[str, Any], cores_per_node: int) -> str:
    return (f"{needed['cores']:,} cores = {needed['nodes']:,} nodes of {cores_per_node} "
            f"({needed['core_hours']:,.1f} core-hours; reads {needed['read_mb_s']:,.1f} MB/s"
            + (f", writes {needed['write_mb_s']:,.2f} MB/s)" if needed["write_mb_s"] is not None else ")"))


def _plan_summary(r: dict[str, Any]) -> Summary:
    m = r["measured"]
    split = ", ".join(f"{k} {v:.1f}" for k, v in m["per_image_ms"].items() if v is not None)
    facts = [
        ("measured", f"{m['per_core_images_s']:.1f} images/s per core on {m['cores']} cores here "
                     f"({split} ms per image); a job's fixed cost {m['job_fixed_s']:.1f} s"),
        ("sample", f"{r['sample']['images']} {'made' if r['sample']['synthetic'] else 'read'} images of "
                   f"{r['sample']['mean_bytes'] / 1e3:.0f} KB on average from {r['sample']['source']}"),
        ("fp32", _needed_line(r["needed"], r["cores_per_node"])),
    ]
    if "int8" in r:
        facts.append(("int8", f"{_needed_line(r['int8']['needed'], r['cores_per_node'])}, "
                              f"{r['int8']['speedup']:.2f}x per core; {r['int8']['note']}"))
    facts += [(f"bottleneck {i + 1}", step) for i, step in enumerate(r["bottleneck"]["steps"])]
    facts.append(("here", f"{fmt(r['images'])} images would take {r['estimate_here_s']:,.0f} s on these "
                          f"{m['cores']} cores"))
    return Summary(f"{r['images']:,} images in {r['hours']:g} h need {r['needed']['cores']:,} cores "
                   f"({r['needed']['nodes']:,} nodes of {r['cores_per_node']})", facts,
                   [f"sparkvision predict --model {r['model']} --input SRC --out PREDICTIONS --master URL"])


def register(subparsers: argparse._SubParsersAction, parents: dict[str, argparse.ArgumentParser]) -> None:
    plan = subparsers.add_parser(
        "plan",
        parents=[parents["spark"], parents["logging"]],
        help="size a cluster for a prediction job: cores and nodes for N images in H hours, measured here",
        description="Measure MODEL_DIR here (this machine, or the cluster of --master) on a sample of SRC with the "
        "real predict, then size the job: cores = images / (images per second per core x hours x 3600), nodes = "
        "cores / --cores-per-node, and the read and write bandwidth that many cores need. Two warm runs of the "
        "sample (once, and --scale times over) separate a job's fixed cost from each image's; one core's decode "
        "and model times, measured alone, split each image's cost into decode, model and the rest (Spark, Arrow, "
        "the write), and show where the bottleneck moves (with --int8, once the model is int8).",
        epilog="Examples:\n"
        "  sparkvision plan --model models/imagenette --input photos/ --images 10000000 --hours 8\n"
        "  sparkvision plan --model models/imagenette --images 10000000 --mean-bytes 120000 --hours 8 --int8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("--model", required=True, metavar="MODEL_DIR", help="the sparkvision model directory to run")
    plan.add_argument("--input", default=None, metavar="SRC",
                      help="your images (any source predict reads); a random --sample of them is measured")
    plan.add_argument("--images", type=int, default=None, metavar="N",
                      help="images to plan for (default: the number in SRC)")
    plan.add_argument("--mean-bytes", type=float, default=None, metavar="B",
                      help="mean size of an image file in bytes (default: measured on SRC); without --input, "
                      "JPEGs of this size are made and measured")
    plan.add_argument("--hours", type=float, required=True, metavar="H", help="the time the job may take")
    plan.add_argument("--cores-per-node", type=int, default=None,
                      help=f"task slots per node (default {PlanSettings.cores_per_node})")
    plan.add_argument("--read-gb-s", type=float, default=None,
                      help=f"read bandwidth of the images' storage in GB/s, to say when it limits "
                      f"(default {PlanSettings.read_gb_s:g})")
    plan.add_argument("--sample", type=int, default=None,
                      help=f"images measured (default {PlanSettings.sample}); more gives a steadier figure")
    plan.add_argument("--int8", action="store_true",
                      help="also quantise the model to int8 (static, calibrated on the sample) and measure its "
                      "speed; 'sparkvision optimize --int8' measures its accuracy")
    plan.add_argument("--scratch", default=None, metavar="DIR_OR_URI",
                      help="where the sample runs write their predictions (default: a temporary local folder; "
                      "on a multi-node cluster give a shared URI such as hdfs://... or s3a://...)")
    group = plan.add_argument_group("source")
    group.add_argument("--source-kind", choices=["auto", "builtin", "dataset", "folder", "binaryFile"],
                       default="auto", help="how to read SRC (default: as predict does)")
    group.add_argument("--glob", default=None, help="only files whose name matches this glob")
    group.add_argument("--extensions", default=None, help="comma-separated file extensions to read")
    plan.set_defaults(handler=_plan)
