#!/usr/bin/env python
"""Must-show: a 20,000 x 20,000 image tiles with peak memory reported and bounded.

    .venv/bin/python scripts/tiling_memory.py                 # 20,000 x 20,000, tiled TIFF
    .venv/bin/python scripts/tiling_memory.py --side 8192     # smaller, quicker

1. Writes a synthetic scene (terrain + Fashion-MNIST objects) as a tiled, deflate-compressed
   TIFF, rendered one TIFF tile at a time (never whole in memory).
2. Tiles it in one fresh Python process (``iter_tiles``) and reports that process's peak RSS.
3. Tiles it with Spark (``local[2]``: the scene's rows of tiles are split into work units
   spread over tasks) and writes the tile dataset, sampling the peak RSS of every Spark
   Python worker.

A whole decode of the scene would need width x height x 3 bytes (1,144 MiB at 20,000^2),
more than the tiling limit ``max_decode_bytes`` allows. Prints a JSON report (``--json``
writes it to a file too).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SPARKVISION_CACHE", str(ROOT / ".cache" / "sparkvision"))

from sparkvision.config import SparkSettings, TilingSettings  # noqa: E402
from sparkvision.testing.profile import WorkerPeaks, one_process_peak  # noqa: E402
from sparkvision.testing.synthetic_scenes import make_scene, write_tiled_tiff  # noqa: E402

log = logging.getLogger("tiling_memory")


def write_scene(path: Path, side: int, seed: int = 20) -> dict:
    objects = max(1, (side // 2000) ** 2)
    started = time.perf_counter()
    write_tiled_tiff(make_scene(side, side, objects, seed=seed), path)
    return {"side": side, "objects": objects, "file_mib": path.stat().st_size / 2**20,
            "write_seconds": time.perf_counter() - started}


def spark_peak(path: Path, out: Path, settings: TilingSettings) -> dict:
    from sparkvision.session import get_spark
    from sparkvision.tiling.tiles import list_sources, tile, write_tiles

    spark = get_spark(SparkSettings(master="local[2]", app_name="tiling-memory"))
    started = time.perf_counter()
    with WorkerPeaks() as peaks:
        manifest = write_tiles(spark, tile(list_sources(spark, str(path)), settings), str(out), overwrite=True)
    seconds = time.perf_counter() - started
    workers = {pid: kib / 1024.0 for pid, kib in peaks.peaks_kib.items()}
    spark.stop()
    return {
        "tiles": manifest.tiles, "kept": manifest.kept, "tile_errors": manifest.tile_errors, "seconds": seconds,
        "tiles_per_second": manifest.tiles / seconds, "python_workers": len(workers),
        "worker_peak_rss_mib": max(workers.values(), default=0.0),
        "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "output_mib": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20,
    }


def run(side: int, work: Path, spark: bool = True) -> dict:
    settings = TilingSettings()
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"scene-{side}.tif"
    report: dict = {"decoded_mib": side * side * 3 / 2**20, "settings": {"size": settings.size, "overlap": settings.overlap}}
    if not scene.exists():
        log.info("writing a %d x %d tiled TIFF to %s", side, side, scene)
        report["scene"] = write_scene(scene, side)
    else:
        report["scene"] = {"side": side, "file_mib": scene.stat().st_size / 2**20, "reused": True}
    log.info("tiling in one process")
    report["one_process"] = one_process_peak(str(scene), settings)
    report["one_process"]["tiles_per_second"] = report["one_process"]["tiles"] / report["one_process"]["seconds"]
    if spark:
        log.info("tiling with Spark local[2]")
        report["spark"] = spark_peak(scene, work / "tiles", settings)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=20000, help="scene width and height in pixels")
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    parser.add_argument("--no-spark", action="store_true", help="only the one-process measurement")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sparkvision-tiling-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = run(args.side, work, spark=not args.no_spark)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
