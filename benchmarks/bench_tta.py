"""Test-time augmentation: ``fit`` with and without ``--tta flip``, same sets, same defaults.

``tta="flip"`` averages each image's pooled features with its mirror image's, in fitting
and in every later prediction (Spark, the server, the exported graph), for twice the CNN
work. Figures: validation accuracy and the whole ``fit`` time (featurizing train and val,
model selection, the final fit), each fitted in the same process on the same rows.

Sets: imagenette-mini (800 train / 400 val photos) and Fashion-MNIST (4,000 train / 1,500
test), as in ``bench_fit_defaults``.

    .venv/bin/python benchmarks/run.py tta           # about 10 minutes on 2 cores
    .venv/bin/python benchmarks/run.py tta --quick   # 20 + 10 images per class
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import IMAGENETTE, Result, table, timed  # noqa: E402

TITLE = "test-time augmentation (--tta flip): accuracy gained and time paid, fit on the same sets"


def run(quick: bool = False) -> Result:
    from sparkvision.config import SparkSettings, TransferSettings
    from sparkvision.io import load_images
    from sparkvision.io.splits import sample_per_class
    from sparkvision.ml.classifier import fit_transfer
    from sparkvision.session import get_spark

    spark = get_spark(SparkSettings(master="local[2]", driver_memory="2g"))
    train_n, val_n = (20, 10) if quick else (None, None)

    def sample(frame, n):
        return frame if n is None else sample_per_class(frame, n, 42)

    sets = [
        ("imagenette-mini", sample(load_images(spark, str(IMAGENETTE / "train"), probe="header"), train_n),
         sample(load_images(spark, str(IMAGENETTE / "val"), probe="header"), val_n)),
        ("Fashion-MNIST", sample_per_class(load_images(spark, "fashion-mnist:train"), train_n or 400, 42),
         sample_per_class(load_images(spark, "fashion-mnist:test"), val_n or 150, 42)),
    ]
    figures = []
    for name, train, val in sets:
        train, val = train.cache(), val.cache()
        row = {"set": name, "train_rows": train.count(), "val_rows": val.count()}
        for tta in ("none", "flip"):
            seconds, model = timed(lambda t=train, v=val, tta=tta: fit_transfer(t, v, replace(TransferSettings(), tta=tta)))
            row[tta] = {"accuracy": model.metrics["accuracy"], "fit_s": seconds,
                        "selection": model.provenance.get("model_selection")}
        train.unpersist()
        val.unpersist()
        figures.append(row)
    rows = [[f["set"], f"{f['train_rows']:,} / {f['val_rows']:,}", f"{f['none']['accuracy']:.4f}",
             f"{f['flip']['accuracy']:.4f}", f"{f['flip']['accuracy'] - f['none']['accuracy']:+.4f}",
             f"{f['none']['fit_s']:.0f} / {f['flip']['fit_s']:.0f}", f"{f['flip']['fit_s'] / f['none']['fit_s']:.2f}x"]
            for f in figures]
    markdown = "\n\n".join([
        "`fit` defaults (EfficientNet-Lite0 pooled features, logistic regression chosen by 3-fold CV) "
        "without and with `--tta flip`, fitted one after the other in one process on the same cached rows.",
        table(["set", "train / val", "val accuracy", "with --tta flip", "gain", "fit s (none / flip)",
               "time"], rows),
        "Read: flipping doubles the CNN work in fitting and in prediction; whether it pays depends on "
        "the data (a mirrored photo is still a photo of the class; a mirrored digit or text is not).",
    ])
    return Result(markdown, {"sets": figures})


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv).figures, indent=2, default=str))
