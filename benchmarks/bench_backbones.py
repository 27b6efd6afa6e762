"""Backbones: ``fit`` defaults' accuracy and featurization speed with EfficientNet-Lite0, Lite1 and Lite2.

For every backbone (``sparkvision fit --backbone NAME``), on the two sets of ``bench_fit_defaults``
(imagenette-mini 800 train / 400 val photos; Fashion-MNIST 4,000 train / 1,500 test):

* ``fit`` defaults' validation accuracy: the ``ImageFeaturizer`` stage's vectors, computed once,
  logistic regression with regParam and standardization chosen by 3-fold CV; next to it, the
  hand scikit-learn probe (C by 3-fold CV from {0.1, 1, 10}) on the same vectors;
* featurization speed on imagenette-mini's 400 val photos: ONNX Runtime alone on tensors decoded
  beforehand (the model's own speed, 2 threads; best of three rounds that take the backbones in
  turn, so load on the machine hits all of them alike), and Spark end to end (read, decode,
  resize, ONNX Runtime; ``local[2]``, warm, best of two runs);
* GFLOPs per image (``sparkvision models``).

    .venv/bin/python benchmarks/run.py backbones                 # about an hour on 2 busy cores
    .venv/bin/python benchmarks/bench_backbones.py --backbone efficientnet_lite2 [--quick]   # one, JSON out
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_featurize import _ceiling, _subset_folder  # noqa: E402
from bench_fit_defaults import compare, data_sets  # noqa: E402
from common import IMAGENETTE, Result, table, transform_runs  # noqa: E402

TITLE = "Backbones: fit defaults' accuracy and featurization speed, EfficientNet-Lite0 / Lite1 / Lite2"
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def speeds(spark, backbones: tuple[str, ...], quick: bool) -> dict[str, dict[str, float]]:
    """Images/s of each backbone: ONNX Runtime alone (best of rounds) and Spark end to end (warm)."""
    from sparkvision.config import FeaturizeSettings
    from sparkvision.ml.featurizer import ImageFeaturizer
    from sparkvision.models.onnx_export import registered_onnx

    files = sorted(IMAGENETTE.glob("val/*/*"))[:: 10 if quick else 1]
    for name in backbones:
        registered_onnx(name)  # exported before anything is timed
    ceiling = {name: 0.0 for name in backbones}
    for _ in range(1 if quick else 3):
        for name in backbones:
            ceiling[name] = max(ceiling[name], _ceiling(files, 2, FeaturizeSettings.batch_size, 1, name))
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as tmp:
        folder = _subset_folder(files, Path(tmp) / "val")
        for name in backbones:
            first_s, warm = transform_runs(spark, ImageFeaturizer(modelName=name), folder, len(files), 2)
            figures[name] = {"images": len(files), "ceiling_img_s": ceiling[name],
                             "spark_warm_img_s": len(files) / min(warm), "spark_first_img_s": len(files) / first_s}
    return figures


def run(quick: bool = False, backbones: tuple[str, ...] = BACKBONES) -> Result:
    from sparkvision.config import SparkSettings
    from sparkvision.models.catalog import model_facts
    from sparkvision.session import get_spark

    spark = get_spark(SparkSettings(master="local[2]", driver_memory="2g"))
    speed = speeds(spark, backbones, quick)
    sets = data_sets(spark, quick)
    figures = {name: {**model_facts(name), **speed[name],
                      "sets": [compare(spark, *s, model_name=name, with_old=False) for s in sets]}
               for name in backbones}
    lite0 = figures.get("efficientnet_lite0")
    rows = []
    for name, f in figures.items():
        by_set = {s["set"]: s for s in f["sets"]}
        im, fm = by_set["imagenette-mini"], by_set["Fashion-MNIST"]
        height, width = f["input_size"]
        rows.append([
            name, f"{height}x{width}", f"{f['gflops']:.2f}",
            f"**{im['new_accuracy']:.4f}** ({im['probe_accuracy']:.4f})",
            f"**{fm['new_accuracy']:.4f}** ({fm['probe_accuracy']:.4f})",
            f"{f['ceiling_img_s']:.0f}" + (f" ({f['ceiling_img_s'] / lite0['ceiling_img_s']:.2f}x)" if lite0 else ""),
            f"{f['spark_warm_img_s']:.0f}" + (f" ({f['spark_warm_img_s'] / lite0['spark_warm_img_s']:.2f}x)"
                                             if lite0 else ""),
        ])
    sizes = {s["set"]: f"{s['train_rows']:,} / {s['val_rows']:,}" for s in next(iter(figures.values()))["sets"]}
    markdown = "\n\n".join([
        f"`sparkvision fit --backbone NAME` with its defaults (pooled features of the frozen backbone, logistic "
        f"regression, regParam and standardization by 3-fold CV) on imagenette-mini ({sizes['imagenette-mini']} "
        f"train / val) and Fashion-MNIST ({sizes['Fashion-MNIST']} train / test: `--train fashion-mnist:train "
        f"--per-class 400 --val fashion-mnist:test --val-per-class 150`); in brackets the hand scikit-learn probe "
        f"(C by 3-fold CV from {{0.1, 1, 10}}) on the same vectors. Speed: images/s featurizing imagenette-mini's "
        f"{next(iter(speed.values()))['images']} val photos on 2 cores, ONNX Runtime alone on decoded tensors "
        f"(best of rounds taking the backbones in turn) and the Spark `ImageFeaturizer` end to end (warm); in "
        f"brackets, relative to Lite0.",
        table(["backbone", "input", "GFLOPs", "imagenette-mini val (probe)", "Fashion-MNIST test (probe)",
               "ONNX Runtime img/s", "Spark img/s"], rows),
    ])
    return Result(markdown, {"backbones": figures})


if __name__ == "__main__":
    import argparse
    import json
    import logging

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", action="append", default=None, metavar="NAME",
                        help="a registered backbone (repeatable; default: Lite0, Lite1 and Lite2)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(args.quick, tuple(args.backbone or BACKBONES))
    print(result.markdown)
    print(json.dumps(result.figures, indent=2, default=str))
