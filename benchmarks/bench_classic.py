"""Classic features against a CNN's: ``fit --backbone hog --pca 128`` vs ``fit`` on Lite0 features.

What the Spark image-recognition guides compare (issue 17): HOG reduced by MLlib's PCA, then logistic
regression, against a pretrained CNN's features with the same head, on imagenette-mini (800 / 400 photos)
and Fashion-MNIST 4,000 / 1,500 (``sample_per_class`` 400 / 150 of the built-in sets, seed 42: the sets of
``bench_fit_auto`` and ``bench_finetune``). Each fit is one ``sparkvision fit`` command (its own process,
as a user runs it) with ``fit``'s defaults (regParam x standardization by 3-fold CV); accuracy is on the
val part. images/s is prediction with the saved model (the whole PipelineModel: decode, features, PCA,
head) on the val images in one Spark session: a cold run (model broadcast, worker sessions), then a warm one.

    .venv/bin/python benchmarks/run.py classic           # about 20 minutes on 2 idle cores
    .venv/bin/python benchmarks/run.py classic --quick   # imagenette only, to check it runs
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_finetune import fashion_datasets  # noqa: E402
from common import IMAGENETTE, Result, predict_rate, table  # noqa: E402

TITLE = "Classic features: HOG + PCA + logistic regression against Lite0 features (imagenette-mini, Fashion-MNIST)"
SETS = {"imagenette": "imagenette-mini 800 / 400", "fashion": "Fashion-MNIST 4,000 / 1,500"}
#: (label, fit flags): the classic path and the CNN it is compared with, the same head for both.
CONFIGS = (("hog + PCA 128 + logreg", ["--backbone", "hog", "--pca", "128"]),
           ("efficientnet_lite0 features + logreg", ["--backbone", "efficientnet_lite0"]))


def sources(data: str, work: Path) -> tuple[str, str]:
    if data == "fashion":
        return fashion_datasets(work)
    return str(IMAGENETTE / "train"), str(IMAGENETTE / "val")


def run_fit(train: str, val: str, flags: list[str], out: Path) -> dict:
    """One ``sparkvision fit`` command: its JSON report, the model card's timings, and its wall seconds."""
    from sparkvision.models.model_dir import load_card

    command = [sys.executable, "-m", "sparkvision.cli.main", "fit", "--train", train, "--val", val, "--out", str(out),
               "--overwrite", "--json", *flags]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    provenance = load_card(out).provenance
    return {**json.loads(done.stdout), "wall_seconds": seconds,
            **{k: provenance.get(k) for k in ("featurize_seconds", "head_seconds", "fit_seconds")}}


def report(results: dict[str, dict[str, dict]]) -> Result:
    rows = []
    for data, configs in results.items():
        for label, r in configs.items():
            v = r["validation"]
            pca = r.get("pca") or {}
            rows.append([SETS[data], label, f"{v['accuracy']:.4f}", f"{v['macro_f1']:.4f}",
                         f"{pca['explained_variance']:.1%}" if pca else "-",
                         f"{r['rate']['images_per_s']:.0f}", f"{r['featurize_seconds']:.0f}",
                         f"{r['head_seconds']:.0f}", f"{r['wall_seconds']:.0f}"])
    ratios = []
    for data, configs in results.items():
        hog, cnn = (configs[label] for label, _ in CONFIGS)
        ratios.append(f"{SETS[data]}: HOG predicts {hog['rate']['images_per_s'] / cnn['rate']['images_per_s']:.1f}x "
                      f"as fast, {100 * (cnn['validation']['accuracy'] - hog['validation']['accuracy']):.1f} points "
                      "of accuracy behind")
    markdown = "\n\n".join([
        "`sparkvision fit --train TRAIN --val VAL --out M` with `--backbone hog --pca 128` (HOG, 1,764 values, "
        "reduced to 128 principal components by an MLlib PCA stage in the saved pipeline) and with `--backbone "
        "efficientnet_lite0` (1,280 pooled features), logistic regression chosen by `fit`'s defaults for both. "
        "images/s: the saved model on the val images in one local[2] Spark session, to Spark's noop sink (a warm run "
        "after a cold one). Seconds are wall time on 2 cores shared with other jobs.",
        table(["set", "model", "val accuracy", "macro F1", "PCA variance kept", "predict images/s",
               "featurize s (fit)", "head s (fit)", "fit wall s"], rows),
        "; ".join(ratios) + ".",
    ])
    return Result(markdown, {"results": results})


def run(quick: bool = False) -> Result:
    from sparkvision.config import SparkSettings
    from sparkvision.session import get_spark

    work = Path(tempfile.mkdtemp(prefix="bench-classic-"))
    results: dict[str, dict[str, dict]] = {}
    try:
        for data in ("imagenette",) if quick else tuple(SETS):
            train, val = sources(data, work)
            results[data] = {label: {**run_fit(train, val, flags, work / f"{data}-{i}"), "model": work / f"{data}-{i}"}
                             for i, (label, flags) in enumerate(CONFIGS)}
        spark = get_spark(SparkSettings(master="local[2]", driver_memory="3g", app_name="bench-classic"))
        try:
            for data, configs in results.items():
                _, val = sources(data, work)
                for r in configs.values():
                    r["rate"] = predict_rate(spark, r.pop("model"), val)
        finally:
            spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(results)


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv).figures, indent=2, default=str))
