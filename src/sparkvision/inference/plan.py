"""Cluster sizing from a measurement: the cores and nodes a ``predict`` job needs to finish in time.

The sizing rule of the Spark image-recognition guides,

    cores = images x seconds per image per core / (target hours x 3600),  nodes = cores / cores per node,

is only as good as its *seconds per image per core*. :func:`plan` measures that here, on
this Spark application (embedded or a cluster) and a sample of the user's own images,
with the real :func:`~sparkvision.inference.predict.predict` (Spark tasks, decode, the
model, the Parquet write and its row check):

* two warm runs, of the sample and of the sample repeated ``scale`` times, give a job's
  fixed cost and the cost of each further image on this application's cores;
* one core's decode and model times, measured alone in this process, split the per-image
  cost into decode, model and the rest (Spark, Arrow, Python, the write), which shows
  where the bottleneck moves, for example once an int8 model shrinks the model's part.

Featurizing and predicting are one narrow map per partition, without a shuffle, so the
time scales as images / (cores x per-core rate); reading the source and writing the
predictions scale with it, and the read and write bandwidth they need is reported.
"""

from __future__ import annotations

import io
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparkvision import storage
from sparkvision.config import DecodeSettings, FeaturizeSettings, IngestSettings, PlanSettings
from sparkvision.session import default_parallelism

log = logging.getLogger(__name__)


@dataclass
class PlanSample:
    """The images measured: read from the user's source, or made to the size they gave."""

    contents: list[bytes]
    source: str
    synthetic: bool
    #: Images in the whole source (None when only a sample was read, or none was given).
    source_images: int | None
    mean_bytes: float


# --- the sample ---------------------------------------------------------------------------------------


def sample_source(spark, src: str, size: int, seed: int = 0, kind: str = "auto",
                  ingest: IngestSettings | None = None, glob: str | None = None,
                  count: bool = True) -> PlanSample:
    """``size`` images of ``src``, chosen at random, and the source's image count and mean size.

    A local folder is listed on the driver (sizes from the listing, nothing read but the
    sample); other sources are read through :func:`~sparkvision.io.load_images`, and
    counted only when ``count`` (a count reads every file of a ``binaryFile`` URI).
    """
    from pyspark.sql import functions as F

    from sparkvision.io import load_images
    from sparkvision.io.load import resolve_kind
    from sparkvision.io.schema import CONTENT
    from sparkvision.io.sources import list_folder

    kind = resolve_kind(spark, src) if kind == "auto" else kind
    if kind == "folder":
        files = list_folder(src, ingest, glob).files
        if files.empty:
            raise FileNotFoundError(f"no image files under {src!r}")
        chosen = files.sample(n=min(size, len(files)), random_state=seed)
        contents = []
        for fs_path in chosen["fs_path"]:
            with open(fs_path, "rb") as handle:
                contents.append(handle.read())
        sizes = files["size"][files["size"] >= 0]
        return PlanSample(contents, src, False, len(files), float(sizes.mean()))
    frame = load_images(spark, src, kind=kind, ingest=ingest, glob=glob, probe="none")
    total = frame.count() if count else None
    fraction = 1.0 if not total else min(1.0, 3.0 * size / total)
    rows = (frame.where(F.col(CONTENT).isNotNull()).sample(fraction=fraction, seed=seed)
            .limit(size).select(CONTENT).collect())
    contents = [bytes(r[CONTENT]) for r in rows]
    if not contents:
        raise FileNotFoundError(f"no readable images in {src!r}")
    return PlanSample(contents, src, False, total, float(np.mean([len(c) for c in contents])))


def synthetic_photos(count: int, mean_bytes: float, seed: int = 0, quality: int = 90) -> list[bytes]:
    """JPEGs of about ``mean_bytes`` each, 4:3, with the smooth shapes and fine grain of photos.

    Decode time follows pixels, and a JPEG's size follows pixels and detail: these are
    scaled until their mean size is within a few percent of ``mean_bytes``, so they stand
    for photos of that size when the user has none at hand. Measuring real photos
    (``--input``) is better: detail, and so bytes per pixel, varies between collections.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = [rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8) for _ in range(count)]

    def make(width: int, height: int) -> list[bytes]:
        out = []
        for base in coarse:
            smooth = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC), np.float32)
            grain = rng.normal(0, 8, size=smooth.shape).astype(np.float32)
            pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
            out.append(buffer.getvalue())
        return out

    width = max(16, int(math.sqrt(mean_bytes / 0.4 * 4 / 3)))  # a first guess of 0.4 bytes per pixel
    for _ in range(4):
        photos = make(width, max(12, width * 3 // 4))
        got = float(np.mean([len(p) for p in photos]))
        if abs(got - mean_bytes) <= 0.05 * mean_bytes:
            break
        width = max(16, int(width * math.sqrt(mean_bytes / got)))
    return photos


# --- the measurements ---------------------------------------------------------------------------------


def _best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


@dataclass
class CoreCosts:
    """One core's milliseconds per image for decode + preprocess and for the model, measured alone."""

    decode_ms: float
    model_ms: float | None
    int8_model_ms: float | None = None


def measure_core(model_dir: str | Path, contents: Sequence[bytes], repeats: int = 2, int8: bool = False,
                 decode: DecodeSettings | None = None) -> CoreCosts:
    """Decode and model time per image on one thread, as one Spark task slot runs them."""
    from sparkvision.models.model_dir import load_card, onnx_path
    from sparkvision.models.runtime import OnnxModel
    from sparkvision.preprocess import ImagePreprocessor

    card = load_card(model_dir)
    preprocessor = ImagePreprocessor(card.preprocess, decode)
    batch = preprocessor(contents)
    if not len(batch.index):
        raise ValueError("no image of the sample could be decoded: "
                         f"{next((e for e in batch.errors if e), 'unknown error')}")
    decode_s = _best_of(repeats, lambda: preprocessor(contents))  # every image, failed decodes included
    tensors = batch.tensor
    if card.tta == "flip":  # the model runs on each image and its mirror image
        tensors = np.concatenate([tensors, np.ascontiguousarray(tensors[..., ::-1])])
    try:
        graph = onnx_path(model_dir, card)
    except FileNotFoundError:
        return CoreCosts(decode_s / len(contents) * 1e3, None)
    size = FeaturizeSettings.batch_size

    def model_ms(path: Path) -> float:
        model = OnnxModel(path, threads=1)
        model.run(tensors[:size])  # warm-up: first-call allocations
        seconds = _best_of(repeats, lambda: [model.run(tensors[i:i + size]) for i in range(0, len(tensors), size)])
        return seconds / len(batch.index) * 1e3

    costs = CoreCosts(decode_s / len(contents) * 1e3, model_ms(graph))
    if int8:
        from sparkvision.config import QuantizeSettings
        from sparkvision.deploy.quantize import quantize_model

        with tempfile.TemporaryDirectory(prefix="sparkvision-plan-int8-") as work:
            quantized = quantize_model(graph, Path(work) / "int8.onnx", QuantizeSettings(),
                                       calibration=batch.tensor[:QuantizeSettings.calibration_images])
            costs.int8_model_ms = model_ms(quantized)
    return costs


def _sample_frame(spark, contents: Sequence[bytes], copies: int):
    """The sample as image rows (``copies`` times over, each copy its own paths), on every core."""
    from sparkvision.io.schema import IMAGE_SCHEMA

    rows = [(f"plan-sample://{copy}/{i}", None, content, None, None, None, None, None, None)
            for copy in range(copies) for i, content in enumerate(contents)]
    return spark.createDataFrame(rows, IMAGE_SCHEMA).repartition(default_parallelism(spark))


def _bytes_under(path: str) -> int | None:
    local = storage.local_path_or_none(path)
    if local is None:
        return None
    return sum(f.stat().st_size for f in Path(local).rglob("*") if f.is_file() and not f.name.startswith((".", "_")))


@dataclass
class SparkCosts:
    """What the real ``predict`` costs on this application: a job's fixed part, and each image."""

    cores: int
    job_fixed_s: float
    seconds_per_image: float  # on all ``cores`` together
    first_job_extra_s: float
    output_bytes_per_image: float | None
    runs_s: dict[str, float] = field(default_factory=dict)

    @property
    def per_core_images_s(self) -> float:
        return 1.0 / (self.seconds_per_image * self.cores)


def measure_spark(spark, model_dir: str | Path, contents: Sequence[bytes], settings: PlanSettings,
                  scratch: str, min_seconds_per_image: float = 0.0) -> SparkCosts:
    """Time ``predict`` on the sample and on the sample ``scale`` times over, warm, fastest of ``repeats``.

    An image cannot cost less than its decode and model work spread over every core
    (``min_seconds_per_image``): a difference of two runs below that is noise (a sample
    too small for these cores), and the bound is used instead, with a warning.
    """
    from sparkvision.inference.predict import predict

    small, large = len(contents), len(contents) * settings.scale
    frames = {n: _sample_frame(spark, contents, n // small) for n in (small, large)}
    out = scratch.rstrip("/") + "/predictions"

    def run(n: int) -> None:
        summary = predict(spark, model_dir, frames[n], out, overwrite=True)
        if summary.rows != n:
            raise RuntimeError(f"the sample run wrote {summary.rows} rows for {n} images")

    first = _best_of(1, lambda: run(small))  # Python workers start, the model loads on each
    warm_small = _best_of(settings.repeats, lambda: run(small))
    warm_large = _best_of(settings.repeats, lambda: run(large))
    per_image = (warm_large - warm_small) / (large - small)
    if per_image < 0.8 * min_seconds_per_image:
        log.warning("the sample runs differ by less than the images' decode and model work (%.1f s for %d more "
                    "images): using that work as each image's cost; a larger --sample measures Spark's share too",
                    warm_large - warm_small, large - small)
    per_image = max(per_image, min_seconds_per_image)
    written = _bytes_under(out)
    return SparkCosts(
        cores=default_parallelism(spark),
        job_fixed_s=max(0.0, warm_large - per_image * large),
        seconds_per_image=per_image,
        first_job_extra_s=max(0.0, first - warm_small),
        output_bytes_per_image=None if written is None else written / large,
        runs_s={f"first {small}": first, f"warm {small}": warm_small, f"warm {large}": warm_large},
    )


# --- the plan -----------------------------------------------------------------------------------------


def resources_for(images: int, hours: float, per_core_images_s: float, cores_per_node: int,
                  mean_bytes: float, output_bytes: float | None) -> dict[str, Any]:
    """Cores and nodes to predict ``images`` in ``hours``, and the bandwidth they then read and write."""
    cores = max(1, math.ceil(images / (per_core_images_s * hours * 3600)))
    rate = cores * per_core_images_s
    return {
        "cores": cores,
        "nodes": math.ceil(cores / cores_per_node),
        "core_hours": images / per_core_images_s / 3600,
        "images_per_second": rate,
        "read_mb_s": rate * mean_bytes / 1e6,
        "write_mb_s": None if output_bytes is None else rate * output_bytes / 1e6,
    }


def _bottleneck(per_image_ms: dict[str, float | None], int8_ms: dict[str, float] | None, per_core_images_s: float,
                mean_bytes: float, read_gb_s: float, cores: int) -> dict[str, Any]:
    """Where the time goes per image, and the steps at which the limit moves."""
    known = {k: v for k, v in per_image_ms.items() if v is not None}
    order = sorted(known, key=lambda k: -known[k])
    total = sum(known.values())
    steps = [f"compute: {', '.join(f'{k} {known[k] / total:.0%}' for k in order)} of each image's "
             f"{total:.1f} ms on one core"]
    if int8_ms is not None:
        order8 = sorted(int8_ms, key=lambda k: -int8_ms[k])
        total8 = sum(int8_ms.values())
        steps.append(f"with int8 the model takes {int8_ms['model'] / total8:.0%} of {total8:.1f} ms and "
                     f"{order8[0]} leads ({int8_ms[order8[0]] / total8:.0%})")
    elif order and order[0] == "model":
        steps.append("a smaller or int8 model (--int8 measures one) moves the limit to decode and the rest")
    storage_cores = read_gb_s * 1e9 / (per_core_images_s * mean_bytes)
    steps.append(f"storage: each core reads {per_core_images_s * mean_bytes / 1e6:.2f} MB/s, so "
                 f"{read_gb_s:g} GB/s of reads feeds {storage_cores:,.0f} cores; "
                 + ("the plan needs more: reads, not cores, set the pace" if cores > storage_cores
                    else "the plan needs fewer, so compute sets the pace"))
    return {"order": order, "storage_bound_at_cores": storage_cores, "steps": steps}


def plan(spark, model_dir: str | Path, hours: float, sample: PlanSample, images: int | None = None,
         mean_bytes: float | None = None, settings: PlanSettings | None = None, int8: bool = False,
         scratch: str | None = None, decode: DecodeSettings | None = None) -> dict[str, Any]:
    """Measure ``model_dir`` on ``sample`` here, then size the job for ``images`` in ``hours``."""
    settings = settings or PlanSettings()
    if hours <= 0:
        raise ValueError(f"hours must be positive, got {hours}")
    images = images if images is not None else sample.source_images
    if not images or images < 1:
        raise ValueError("the number of images to plan for is unknown: give --images N")
    mean_bytes = mean_bytes or sample.mean_bytes
    own_scratch = scratch is None
    scratch = scratch or tempfile.mkdtemp(prefix="sparkvision-plan-")
    try:
        core = measure_core(model_dir, sample.contents, settings.repeats, int8, decode)
        cores = default_parallelism(spark)
        costs = measure_spark(spark, model_dir, sample.contents, settings, scratch,
                              (core.decode_ms + (core.model_ms or 0.0)) / 1e3 / cores)
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    per_core = costs.per_core_images_s
    total_ms = 1e3 / per_core
    rest_ms = max(0.0, total_ms - core.decode_ms - (core.model_ms or 0.0))
    per_image_ms = {"decode": core.decode_ms, "model": core.model_ms, "rest": rest_ms}
    out_bytes = costs.output_bytes_per_image
    result: dict[str, Any] = {
        "model": str(model_dir),
        "images": int(images),
        "hours": hours,
        "mean_bytes": mean_bytes,
        "sample": {"source": sample.source, "images": len(sample.contents), "synthetic": sample.synthetic,
                   "source_images": sample.source_images, "mean_bytes": sample.mean_bytes},
        "measured": {
            "cores": costs.cores,
            "per_core_images_s": per_core,
            "per_image_ms": per_image_ms,
            "job_fixed_s": costs.job_fixed_s,
            "first_job_extra_s": costs.first_job_extra_s,
            "output_bytes_per_image": out_bytes,
            "runs_s": costs.runs_s,
        },
        # The same job on this application's cores, warm: what the estimate is checked against.
        "estimate_here_s": costs.job_fixed_s + images * costs.seconds_per_image,
        "cores_per_node": settings.cores_per_node,
        "needed": resources_for(images, hours, per_core, settings.cores_per_node, mean_bytes, out_bytes),
    }
    int8_ms = None
    if core.int8_model_ms is not None and core.model_ms is not None:
        int8_ms = {"decode": core.decode_ms, "model": core.int8_model_ms, "rest": rest_ms}
        per_core8 = 1e3 / sum(int8_ms.values())
        result["int8"] = {"model_ms": core.int8_model_ms, "per_core_images_s": per_core8,
                          "speedup": per_core8 / per_core,
                          "needed": resources_for(images, hours, per_core8, settings.cores_per_node, mean_bytes,
                                                  out_bytes),
                          "note": "speed only; `sparkvision optimize --int8` measures the accuracy it costs"}
    result["bottleneck"] = _bottleneck(per_image_ms, int8_ms, per_core, mean_bytes, settings.read_gb_s,
                                       result["needed"]["cores"])
    return result


def plan_sample(spark, src: str | None, settings: PlanSettings, images: int | None, mean_bytes: float | None,
                kind: str = "auto", ingest: IngestSettings | None = None, glob: str | None = None) -> PlanSample:
    """The user's images when ``src`` is given, else photos made to ``mean_bytes``."""
    if src is not None:
        return sample_source(spark, src, settings.sample, settings.seed, kind, ingest, glob, count=images is None)
    if not mean_bytes or mean_bytes <= 0:
        raise ValueError("without --input, give --mean-bytes (and --images): the size of the photos to plan for")
    photos = synthetic_photos(settings.sample, mean_bytes, settings.seed)
    return PlanSample(photos, "synthetic", True, None, float(np.mean([len(p) for p in photos])))


__all__ = ["CoreCosts", "PlanSample", "SparkCosts", "measure_core", "measure_spark", "plan",
           "plan_sample", "resources_for", "sample_source", "synthetic_photos"]

