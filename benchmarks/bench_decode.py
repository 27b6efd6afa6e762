"""Decode + preprocess throughput: sparkvision's batch path vs a per-image Pillow loop.

Both turn the same real JPEG bytes (imagenette-mini, read into memory first) into a
float32 NCHW batch normalised for EfficientNet-Lite0, in this one process, one core,
interleaved repeats (best of each):

* **plain loop**: what tutorials show: per image ``Image.open -> convert("RGB") ->
  resize -> np.asarray(float32) / 255 -> (x - mean) / std -> transpose``, then ``np.stack``.
* **sparkvision**: ``ImagePreprocessor(config)(batch)``: JPEG draft decoding at the
  smallest DCT scale that still covers the target, uint8 resize, and one vectorised
  multiply-add normalisation per batch into a contiguous NCHW array.

Both outputs are compared (max |difference|, in normalised units) so the speed is
for the same result. Then the sparkvision path through Spark end to end:
``load_images`` (list + read, no probe) and a ``mapInPandas`` running the
preprocessor, ``local[cores]``, warm runs.

    .venv/bin/python benchmarks/run.py decode [--quick]
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import IMAGENETTE, Result, table
from PIL import Image

TITLE = "Decode + preprocess: sparkvision batch path vs per-image Pillow loop"
BATCH = 64
log = logging.getLogger("benchmarks.decode")


def _files(quick: bool) -> list[Path]:
    files = sorted(IMAGENETTE.glob("train/*/*.JPEG")) + sorted(IMAGENETTE.glob("val/*/*.JPEG"))
    if not files:
        raise FileNotFoundError(f"no imagenette photos under {IMAGENETTE}")
    return files[::15] if quick else files


def plain_loop(contents: list[bytes], size: tuple[int, int], mean, std) -> np.ndarray:
    """The per-image approach common tutorials show (torchvision-style ToTensor + Normalize in NumPy)."""
    height, width = size
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    out = []
    for data in contents:
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = (arr - mean) / std
        out.append(arr.transpose(2, 0, 1))
    return np.stack(out)


def _batches(contents: list[bytes]) -> list[list[bytes]]:
    return [contents[i: i + BATCH] for i in range(0, len(contents), BATCH)]


def _timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn``; CPU time is what this process used, robust to a busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _best(fn, repeat: int) -> tuple[float, float]:
    runs = [_timed(fn) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def _compare(contents: list[bytes], config, repeat: int) -> dict:
    """Batch by batch, as a model consumes them; outputs compared on the side, untimed."""
    from sparkvision.preprocess import ImagePreprocessor

    pre = ImagePreprocessor(config)
    batches = _batches(contents)

    def plain():
        for batch in batches:
            plain_loop(batch, config.size, config.mean, config.std)

    def ours():
        for batch in batches:
            pre(batch)

    plain_runs, our_runs = [], []
    for _ in range(repeat):  # interleaved, so drifting machine load hits both alike
        plain_runs.append(_timed(plain))
        our_runs.append(_timed(ours))
    plain_wall, plain_cpu = (min(r[i] for r in plain_runs) for i in (0, 1))
    our_wall, our_cpu = (min(r[i] for r in our_runs) for i in (0, 1))
    a = plain_loop(contents[:BATCH], config.size, config.mean, config.std)
    b = pre(contents[:BATCH]).tensor
    assert a.shape == b.shape and b.dtype == np.float32 and b.flags.c_contiguous
    n = len(contents)
    return {
        "images": n,
        "plain_img_s": n / plain_wall,
        "sparkvision_img_s": n / our_wall,
        "ratio": plain_wall / our_wall,
        "cpu_ratio": plain_cpu / our_cpu,
        "max_abs_diff": float(np.abs(a - b).max()),
        "mean_abs_diff": float(np.abs(a - b).mean()),
    }


def _normalise_only(contents: list[bytes], config, repeat: int) -> dict:
    """Where the time goes: normalising already-resized uint8 pixels, per image vs per batch."""
    from sparkvision.preprocess import ImagePreprocessor, Normalizer

    pixels, _, _ = ImagePreprocessor(config).load_uint8(contents)
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)

    def per_image():
        return np.stack([((p.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1) for p in pixels])

    normalizer = Normalizer(config.mean, config.std)

    def batched():
        return np.concatenate([normalizer(pixels[i: i + BATCH]) for i in range(0, len(pixels), BATCH)])

    t_plain = _best(per_image, repeat)[0]
    t_ours = _best(batched, repeat)[0]
    diff = float(np.abs(per_image() - batched()).max())
    return {"plain_img_s": len(pixels) / t_plain, "sparkvision_img_s": len(pixels) / t_ours,
            "ratio": t_plain / t_ours, "max_abs_diff": diff}


def _spark(files: list[Path], config, repeat: int) -> dict:
    import pandas as pd

    from sparkvision.config import SparkSettings
    from sparkvision.io import load_images
    from sparkvision.preprocess import ImagePreprocessor
    from sparkvision.session import get_spark

    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:  # a folder of exactly these photos (links, not copies)
            link = Path(tmp) / f.parent.name / f"{f.parent.parent.name}_{f.name}"
            link.parent.mkdir(exist_ok=True)
            link.symlink_to(f)
        started = time.perf_counter()
        spark = get_spark(SparkSettings(master=f"local[{cores}]", driver_memory="2g", app_name="bench-decode"))
        session_s = time.perf_counter() - started

        def preprocess(batches):
            pre = ImagePreprocessor(config)
            for batch in batches:
                out = pre(list(batch["content"]))
                ok = np.zeros(len(batch), dtype=bool)
                ok[out.index] = True
                total = np.zeros(len(batch))
                total[out.index] = out.tensor.reshape(len(out.index), -1).sum(axis=1)
                yield pd.DataFrame({"path": batch["path"], "ok": ok, "total": total})

        times = []
        for _ in range(1 + repeat):
            frame = load_images(spark, tmp, probe="none").mapInPandas(preprocess, "path string, ok boolean, "
                                                                                   "total double")
            start = time.perf_counter()
            rows = frame.where("ok").count()
            times.append(time.perf_counter() - start)
            assert rows == len(files), f"{rows} of {len(files)} photos preprocessed"
        spark.stop()
    return {"cores": cores, "images": len(files), "session_s": session_s, "first_run_img_s": len(files) / times[0],
            "warm_img_s": len(files) / min(times[1:])}


def run(quick: bool) -> Result:
    from sparkvision.config import PreprocessConfig

    files = _files(quick)
    contents = [f.read_bytes() for f in files]
    repeat = 2 if quick else 3
    log.info("decode benchmark on %d photos", len(contents))
    configs = {
        "224 px (EfficientNet-Lite0)": PreprocessConfig(size=(224, 224)),
        "112 px": PreprocessConfig(size=(112, 112)),
        "160 px": PreprocessConfig(size=(160, 160)),
    }
    figures: dict = {"photos": len(contents), "mean_bytes": float(np.mean([len(c) for c in contents]))}
    rows = []
    for name, config in configs.items():
        result = _compare(contents, config, repeat)
        figures[name] = result
        rows.append([name, result["plain_img_s"], result["sparkvision_img_s"], f"{result['ratio']:.2f}x",
                     f"{result['cpu_ratio']:.2f}x", f"{result['mean_abs_diff']:.2g} / {result['max_abs_diff']:.2g}"])
    norm = _normalise_only(contents, configs["224 px (EfficientNet-Lite0)"], repeat)
    figures["normalise_only_224"] = norm
    spark = _spark(files, configs["224 px (EfficientNet-Lite0)"], 1 if quick else 2)
    figures["spark_224"] = spark

    markdown = "\n\n".join([
        f"{len(contents)} real imagenette JPEGs (224 x 224, mean {figures['mean_bytes'] / 1024:.0f} KiB), bytes in "
        f"memory, one process, one core, batches of {BATCH}. Output: float32 NCHW normalised with mean = std = 0.5 "
        "(EfficientNet-Lite0). Speed-up = plain time / sparkvision time, best of interleaved runs; the CPU-time "
        "column counts only this process's CPU, so it holds on a busy machine.",
        table(["target size", "plain Pillow loop img/s", "sparkvision img/s", "speed-up (wall)", "speed-up (CPU time)",
               "abs diff mean / max"], rows),
        "Normalisation alone at 224 px (pixels already decoded and resized): per-image NumPy "
        f"{norm['plain_img_s']:,.0f} img/s vs vectorised batch {norm['sparkvision_img_s']:,.0f} img/s "
        f"({norm['ratio']:.1f}x, max |diff| {norm['max_abs_diff']:.1g}).",
        f"Through Spark end to end at 224 px (`load_images` + `mapInPandas(ImagePreprocessor)`, "
        f"local[{spark['cores']}], {spark['images']} photos): first run {spark['first_run_img_s']:,.0f} img/s, "
        f"warm {spark['warm_img_s']:,.0f} img/s (session start {spark['session_s']:.0f} s not counted).",
        "Read: at 224 px the photos already have the target size, so both decode the same way and the gain "
        "is the batched, vectorised normalisation (the tutorial loop makes four float passes per image). "
        "Below 224 px, JPEG draft decoding at 1/2 DCT scale cuts the decode itself; its output differs from "
        "full decode + bilinear by the abs diff shown (normalised units, range 2; 0.01 is 1.3 grey levels); at 224 px they agree "
        "to float rounding.",
    ])
    return Result(markdown, figures)
