"""Streaming prediction against batch ``predict``, and the latency from a file landing to its row.

Photos: the 400 imagenette-mini val photos, each resized to 500 px on its long side
(JPEG quality 90): the size of a typical web photo, so decode is not the 224 px shortcut.
Model: pretrained EfficientNet-Lite0 (kind ``onnx``, ImageNet labels). Spark ``local[2]``,
one session for everything, every figure in the same run.

* Throughput: batch ``predict`` of the folder against ``predict --stream
  --trigger available-now`` of the same folder (a fresh checkpoint and output each
  time), with one micro-batch for all files and with ``--max-files-per-trigger 50``. The
  best of two warm runs each; the ratio is what matters.
* Latency at ``--trigger processing-time=2s``: while the stream runs, files land one at a
  time (copied under a hidden name, then renamed) at random moments; a watcher polls the
  output's committed parts every 50 ms. Reported: the seconds from a file's rename to its
  row being readable in the output, median and worst.

    .venv/bin/python benchmarks/run.py stream
"""

from __future__ import annotations

import io
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import IMAGENETTE, Result, imagenet_model, table  # noqa: E402

TITLE = "Streaming prediction: throughput against batch predict, and latency from landing to row"
MASTER = "local[2]"
LONG_SIDE = 500


def resized_jpeg(file: Path, long_side: int = LONG_SIDE) -> bytes:
    """A photo resized to ``long_side`` px on its long side, as JPEG quality 90."""
    from PIL import Image

    with Image.open(file) as img:
        img = img.convert("RGB")
        scale = long_side / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _photos(dst: Path, count: int | None, split: str = "val") -> list[Path]:
    """The first ``count`` photos of an imagenette-mini split at 500 px, in class folders under ``dst``."""
    files = sorted((IMAGENETTE / split).glob("*/*"))[:count]
    out = []
    for file in files:
        target = dst / file.parent.name / (file.name if split == "val" else f"{split}-{file.name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(resized_jpeg(file))
        out.append(target)
    return out


def _batch(spark, model: Path, folder: Path, out: Path) -> float:
    from sparkvision.inference.predict import predict
    from sparkvision.io import load_images

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = predict(spark, model, load_images(spark, str(folder), probe="header"), str(out))
    assert summary.errors == 0
    return time.perf_counter() - start


def _stream(spark, model: Path, folder: Path, work: Path, per_trigger: int | None) -> tuple[float, int]:
    from sparkvision.inference.stream import predict_stream

    for name in ("out", "ck"):
        shutil.rmtree(work / name, ignore_errors=True)
    start = time.perf_counter()
    summary = predict_stream(spark, model, str(folder), str(work / "out"), str(work / "ck"),
                             trigger="available-now", max_files_per_trigger=per_trigger)
    assert summary.errors == 0
    return time.perf_counter() - start, summary.batches


def _latency(spark, model: Path, photos: list[Path], work: Path, landings: int, seed: int = 0) -> list[float]:
    import pyarrow.parquet as pq

    from sparkvision.inference.stream import start_predict_stream

    incoming, out = work / "incoming", work / "live"
    incoming.mkdir()
    query, _ = start_predict_stream(spark, model, str(incoming), str(out), str(work / "live-ck"),
                                    trigger="processing-time=2s")
    landed: dict[str, float] = {}
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        known: set[Path] = set()
        while not stop.is_set():
            for part in out.glob("batch=*") if out.is_dir() else []:
                if part in known:
                    continue
                known.add(part)
                now = time.perf_counter()
                for path in pq.read_table(part, columns=["path"]).column("path").to_pylist():
                    seen.setdefault(path, now)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    rng = random.Random(seed)
    try:
        time.sleep(5)  # the query's first (empty) trigger
        for photo in photos[:landings]:
            time.sleep(rng.uniform(0.5, 3.5))
            target = incoming / photo.name
            shutil.copyfile(photo, incoming / f".{photo.name}.part")
            os.replace(incoming / f".{photo.name}.part", target)
            landed[f"file:{target}"] = time.perf_counter()
        deadline = time.perf_counter() + 120
        while len(seen) < len(landed) and time.perf_counter() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        watcher.join()
        query.stop()
    assert seen.keys() == landed.keys(), (len(seen), len(landed))
    return [seen[p] - landed[p] for p in landed]


def run(quick: bool = False) -> Result:
    from sparkvision.config import SparkSettings
    from sparkvision.session import get_spark

    spark = get_spark(SparkSettings(master=MASTER, driver_memory="2g", app_name="bench-stream"))
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        count = 100 if quick else None
        photos = _photos(work / "photos", count)
        model = imagenet_model(work / "model")
        n = len(photos)
        per_trigger = 50
        _batch(spark, model, work / "photos", work / "batch")  # warm: workers, sessions
        batch = min(_batch(spark, model, work / "photos", work / "batch") for _ in range(2))
        one = min(_stream(spark, model, work / "photos", work, None) for _ in range(2))
        many = min(_stream(spark, model, work / "photos", work, per_trigger) for _ in range(2))
        latencies = _latency(spark, model, photos, work, landings=8 if quick else 20)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        ["batch `predict`", 1, round(batch, 2), round(n / batch, 1), 1.0],
        ["`predict --stream`, one micro-batch", one[1], round(one[0], 2), round(n / one[0], 1),
         round(batch / one[0], 2)],
        [f"`predict --stream --max-files-per-trigger {per_trigger}`", many[1], round(many[0], 2),
         round(n / many[0], 1), round(batch / many[0], 2)],
    ]
    figures = {
        "photos": n, "long_side_px": LONG_SIDE, "batch_seconds": batch, "stream_one_batch": one,
        f"stream_{per_trigger}_per_trigger": many, "latency_seconds": latencies,
        "latency_median": statistics.median(latencies), "latency_max": max(latencies),
    }
    markdown = (
        f"{n} imagenette-mini val photos resized to {LONG_SIDE} px (long side), pretrained EfficientNet-Lite0 "
        f"(kind onnx), Spark {MASTER}, one session, best of two warm runs each (a fresh output and checkpoint "
        "per stream run; each includes the query's start and its every-row checks):\n\n"
        + table(["run", "micro-batches", "seconds", "images/s", "throughput vs batch"], rows)
        + f"\n\nLatency at `--trigger processing-time=2s`: {len(latencies)} files landed one at a time at random "
        f"moments (0.5 to 3.5 s apart); from a file's rename into the watched folder to its row readable in the "
        f"output: median {statistics.median(latencies):.1f} s, worst {max(latencies):.1f} s. A file waits for "
        "the next trigger (up to 2 s) and then for its micro-batch's fixed cost: listing, the model's run, "
        "the staged write, the every-file check and the rename."
    )
    return Result(markdown, figures)
