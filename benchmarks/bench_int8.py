"""int8 through the whole pipeline on real photo sizes: Spark predict fp32 vs int8 vs ONNX Runtime alone.

Photos: the 1,200 imagenette-mini photos (train and val) resized to 500 px on their long side
(as ``bench_stream``), so decode is not the 224 px shortcut, and a run is long enough that its
fixed costs (loading the PipelineModel, the every-row check) do not hide the per-image work. Models: ``fit`` (EfficientNet-Lite0
features + logistic regression) on imagenette-mini train, once plain and once with
``--int8`` (calibrated on 300 train photos, guarded on the 400 val photos). In one run:

* ONNX Runtime alone on pre-decoded tensors, 2 threads, fp32 and int8 graphs (model.onnx);
* through Spark local[2] with each model directory, fp32 and int8 alternating, best of two warm
  runs: the predictions to Spark's noop sink (the per-image work), and ``predict`` itself;
* the runner alone on the JPEG bytes (decode + model, one process, what a Spark task runs),
  with the next batch decoded on a thread while the model runs (``overlap``) and without;
* decode + resize alone (one core) on photos of 224, 500, 1,000 and 4,000 px, and from
  these the per-image split of a Spark task's time (decode / model / the rest);
* what int8 cost: the guard's fp32 and int8 val accuracy, on imagenette-mini and (full
  run) Fashion-MNIST 4,000 / 1,500.

    .venv/bin/python benchmarks/run.py int8
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_stream import _photos, resized_jpeg  # noqa: E402
from common import IMAGENETTE, Result, cpu_by_process, table, timed  # noqa: E402

TITLE = "int8 through the pipeline on 500 px photos: Spark predict fp32 vs int8 vs ONNX Runtime alone"
MASTER = "local[2]"


def _fit(spark, out: Path, train: str, val: str, per_class: int, val_per_class: int | None, int8: bool):
    from dataclasses import replace

    from sparkvision.config import TransferSettings
    from sparkvision.ml.classifier import fit_from_sources
    from sparkvision.models.model_dir import load_card

    settings = replace(TransferSettings(), int8=int8)
    fit_from_sources(spark, train, str(out), settings, val_src=val, per_class=per_class, val_per_class=val_per_class,
                     overwrite=True)
    return load_card(out)


def _decode_ms(sizes: list[int], count: int) -> dict[int, float]:
    """Milliseconds per photo to decode and preprocess to 224 px on one core, per long side."""
    from sparkvision.config import PreprocessConfig
    from sparkvision.preprocess import ImagePreprocessor

    files = sorted((IMAGENETTE / "val").glob("*/*"))[:count]
    prep = ImagePreprocessor(PreprocessConfig())
    out = {}
    for side in sizes:
        blobs = [resized_jpeg(file, side) for file in files]
        seconds, _ = timed(lambda blobs=blobs: prep(blobs), repeat=3)
        out[side] = 1000 * seconds / len(blobs)
    return out


def run(quick: bool = False) -> Result:
    from sparkvision.config import SparkSettings
    from sparkvision.inference.predict import load_model, predict
    from sparkvision.io import load_images
    from sparkvision.models.runner import ClassifierRunner
    from sparkvision.models.runtime import OnnxModel
    from sparkvision.preprocess import ImagePreprocessor
    from sparkvision.session import get_spark

    spark = get_spark(SparkSettings(master=MASTER, driver_memory="3g", app_name="bench-int8"))
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        tmp = Path(tmp)
        photos = _photos(tmp / "photos", 100 if quick else None)
        if not quick:  # the train photos too: 1,200 photos, so a run's fixed costs do not hide the per-image work
            photos += _photos(tmp / "photos", None, "train")
        per_class = 10 if quick else 80
        train, val = str(IMAGENETTE / "train"), str(IMAGENETTE / "val")
        cards = {p: _fit(spark, tmp / p, train, val, per_class, 10 if quick else None, p == "int8")
                 for p in ("fp32", "int8")}
        guard = cards["int8"].metrics["int8"]
        figures["guard_imagenette"] = guard
        timed_photos = photos[:400]  # enough for the steady rate of a single process
        tensor = ImagePreprocessor(cards["fp32"].preprocess)([p.read_bytes() for p in timed_photos]).tensor
        ort = {}
        for precision in ("fp32", "int8"):
            model = OnnxModel(tmp / precision / "model.onnx", threads=2)
            model.run_batched(tensor[:32], "logits", 32)
            seconds, _ = timed(lambda model=model: model.run_batched(tensor, "logits", 32), repeat=2)
            ort[precision] = len(tensor) / seconds
        blobs = [p.read_bytes() for p in timed_photos]
        runner_rate = {}
        for threads in (1, 2):
            for overlap in (False, True):
                runner = ClassifierRunner.from_model_dir(tmp / "fp32", threads=threads, batch_size=32, overlap=overlap)
                runner.predict_proba(blobs[:64])
                seconds, _ = timed(lambda runner=runner: runner.predict_proba(blobs), repeat=2)
                runner_rate[f"{threads} thread{'s' * (threads > 1)}, overlap {'on' if overlap else 'off'}"] = \
                    len(blobs) / seconds
        # fp32 and int8 alternate, round after round, so a slower spell of the machine hits both; the first
        # round is cold (Python workers, ONNX Runtime sessions) and only the best warm run counts.
        times: dict[str, dict[str, list[float]]] = {"predict": {}, "noop": {}}
        cpu: dict[str, dict[str, float]] = {}  # CPU seconds per process kind of the best warm noop run
        src = str(tmp / "photos")
        for i in range(3):
            for precision in ("fp32", "int8"):
                model = load_model(tmp / precision)
                cpu_before, start = cpu_by_process(), time.perf_counter()
                model.predictions(load_images(spark, src, probe="header")).write.format("noop").mode("overwrite").save()
                seconds = time.perf_counter() - start
                if i and seconds <= min(times["noop"][precision][1:], default=math.inf):  # the best warm run's
                    cpu[precision] = {k: round(v - cpu_before[k], 3) for k, v in cpu_by_process().items()}
                times["noop"].setdefault(precision, []).append(seconds)
                start = time.perf_counter()
                predict(spark, str(tmp / precision), load_images(spark, src, probe="header"),
                        str(tmp / f"out-{precision}-{i}"))
                times["predict"].setdefault(precision, []).append(time.perf_counter() - start)
        spark_rate = {p: len(photos) / min(t[1:]) for p, t in times["predict"].items()}
        noop_rate = {p: len(photos) / min(t[1:]) for p, t in times["noop"].items()}
        decode_photos = 20 if quick else 50
        decode = _decode_ms([224, 500, 1000, 4000], decode_photos)
        fmnist = None
        if not quick:
            fm = _fit(spark, tmp / "fmnist", "fashion-mnist:train", "fashion-mnist:test", 400, 150, True)
            fmnist = fm.metrics["int8"]
            figures["guard_fashion_mnist"] = fmnist
    spark.stop()
    figures.update(ort_images_per_second=ort, spark_images_per_second=spark_rate, decode_ms=decode,
                   runner_images_per_second=runner_rate, noop_images_per_second=noop_rate,
                   photos=len(photos), per_class=per_class, decode_photos=decode_photos,
                   noop_cpu_seconds=cpu, seconds={kind: {p: [round(x, 3) for x in t] for p, t in runs.items()} for kind, runs in times.items()})
    return Result(markdown(figures), figures)


def markdown(figures: dict) -> str:
    """The section, from the figures alone (so results/bench_int8.json re-renders it)."""
    ort, spark_rate = figures["ort_images_per_second"], figures["spark_images_per_second"]
    timed = ", 400 val photos" if figures["photos"] > 400 else ""  # the single-process rows' steady rate
    rows = [
        [f"ONNX Runtime alone, fp32, pre-decoded, 2 threads{timed}", ort["fp32"], 1.0],
        [f"ONNX Runtime alone, int8 (fit --int8 model.onnx){timed}", ort["int8"], ort["int8"] / ort["fp32"]],
        ["sparkvision predict in Spark, fp32 (fit), warm", spark_rate["fp32"], spark_rate["fp32"] / ort["fp32"]],
        ["sparkvision predict in Spark, int8 (fit --int8), warm", spark_rate["int8"],
         spark_rate["int8"] / ort["fp32"]],
    ]
    noop = figures.get("noop_images_per_second", {})
    rows += [[f"Spark predictions to a noop sink, {precision} (no output, check or summary)", rate,
              rate / ort["fp32"]] for precision, rate in noop.items()]
    runner_rows = [[f"runner on the JPEG bytes (decode + model), {name}{timed}", rate, rate / ort["fp32"]]
                   for name, rate in figures.get("runner_images_per_second", {}).items()]
    accuracy = []
    for key, name in (("guard_imagenette", "imagenette-mini val"), ("guard_fashion_mnist", "Fashion-MNIST test")):
        g = figures.get(key)
        if g:
            accuracy.append([name, g["val_images"], f"{g['fp32_accuracy']:.4f}", f"{g['int8_accuracy']:.4f}",
                             f"{-g['accuracy_drop_points']:+.2f}", f"{g['top1_agreement']:.4f}", g["precision"]])
    photo_text = ("imagenette-mini photos (train and val)" if figures["photos"] > 400 else "imagenette-mini val photos")
    return (
        f"{figures['photos']} {photo_text} at 500 px (long side), Spark {MASTER}, EfficientNet-Lite0 "
        f"features + logistic regression fitted on {figures['per_class']} train photos per class.\n\n"
        + table(["path", "images/s", "vs ONNX Runtime fp32"], rows + runner_rows)
        + f"\n\nint8 in Spark = **{spark_rate['int8'] / spark_rate['fp32']:.2f}x** fp32 in Spark with `predict`"
        + (f", **{noop['int8'] / noop['fp32']:.2f}x** in the per-image work (noop sink)" if noop else "")
        + ". What int8 cost "
        "(the guard's own figures: both graphs on the same validation images, at most 1,000):\n\n"
        + table(["set", "images", "fp32 accuracy", "int8 accuracy", "change (points)", "top-1 agreement", "kept"],
                accuracy)
        + "\n\nDecode + resize to 224 px, one core, ms per photo: "
        + ", ".join(f"{side} px {ms:.2f}" for side, ms in figures["decode_ms"].items())
        + f" (mean over {figures['decode_photos']} photos made from the shared ones)."
        + _split(figures) + _cpu_split(figures) + _fixed_cost(figures)
    )


def _cpu_split(figures: dict) -> str:
    """Where the CPU of the noop runs went, by process, per photo (read from /proc)."""
    cpu = figures.get("noop_cpu_seconds")
    if not cpu:
        return ""
    photos = figures["photos"]
    parts = [f"{p}: " + ", ".join(f"{kind} {1000 * seconds / photos:.2f}" for kind, seconds in split.items())
             + f" (all {1000 * sum(split.values()) / photos:.2f})" for p, split in cpu.items()]
    return ("\n\nThe same noop runs by process, CPU ms per photo (user + system, from /proc): " + "; ".join(parts)
            + ". The Python workers hold decode, the model and the Arrow/pandas conversion; the JVM reads the "
            "listing, moves the bytes and the results through Arrow, and runs the MLlib head.")


def _fixed_cost(figures: dict) -> str:
    """What ``predict`` adds to the per-image work, and the ratios decode alone allows."""
    seconds = figures.get("seconds")
    ort, decode = figures["ort_images_per_second"], figures["decode_ms"]
    decode_500 = decode.get(500, decode.get("500"))
    if not seconds or decode_500 is None:
        return ""
    fixed = {p: min(seconds["predict"][p][1:]) - min(seconds["noop"][p][1:]) for p in ("fp32", "int8")}
    model = {p: 2000 / ort[p] for p in ("fp32", "int8")}
    return (
        "\n\nWhat `predict` adds to a run (best warm `predict` minus best warm noop run, the same rows): "
        + ", ".join(f"{p} {fixed[p]:.1f} s" for p in fixed)
        + ": loading the saved PipelineModel (Spark ML persistence, about 1 s), the every-row-once check and the "
        "summary (a few small Spark jobs each, whatever the number of images), and writing the Parquet output.\n\n"
        f"What decode alone allows, at {decode_500:.1f} core-ms per 500 px photo and nothing else around the model "
        "(taken at ONNX Runtime's 2-thread cost per image; the runner rows above put its 1-thread cost about the "
        f"same): fp32 in Spark about **{model['fp32'] / (model['fp32'] + decode_500):.2f}** of ONNX Runtime alone "
        "(which gets pre-decoded tensors), and int8 about "
        f"**{(model['fp32'] + decode_500) / (model['int8'] + decode_500):.2f}x** fp32 in Spark."
    )


def _split(figures: dict) -> str:
    """Where a Spark task's time goes per 500 px photo, in core-milliseconds (2 cores busy)."""
    ort, spark_rate, decode = (figures["ort_images_per_second"], figures["spark_images_per_second"],
                               figures["decode_ms"])
    decode_500 = decode.get(500, decode.get("500"))
    if decode_500 is None:
        return ""
    parts = []
    rates = figures.get("noop_images_per_second") or spark_rate
    for precision in ("fp32", "int8"):
        total, model = 2000 / rates[precision], 2000 / ort[precision]
        parts.append(f"{precision}: {total:.1f} in all = decode {decode_500:.1f} + model {model:.1f} + "
                     f"the rest {total - decode_500 - model:.1f}")
    which = "predictions to the noop sink" if figures.get("noop_images_per_second") else "predict"
    return (f"\n\nPer 500 px photo, core-milliseconds of Spark {which} (2 cores / images per second), split by "
            "the one-core decode figure and ONNX Runtime alone (2 threads): " + "; ".join(parts)
            + ". The rest is Spark, Arrow and the pandas UDF's Python, and ONNX Runtime's lower thread "
            "efficiency at one thread per task.")
