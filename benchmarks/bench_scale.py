"""Memory at scale: ingest and featurize 100,000 photos on a standalone cluster; peak RSS of every process.

The photos are re-encoded variants of the shipped imagenette-mini ones (``imagegen``:
crops, flips, JPEG quality), written once to a folder. A master and two one-core workers
run on loopback. Two applications, each its own driver process:

1. ``sparkvision ingest FOLDER --out DATASET --master spark://...`` (the CLI);
2. ``scale_driver.py``: the dataset -> ``ImageFeaturizer`` -> features Parquet (atomic).

While they run, every process's peak resident memory (Linux ``VmHWM``) is sampled each
second: the driver's Python and JVM, the executors' JVMs, and Spark's Python workers.
Rows never come to the driver (outputs are written by the executors and checked with
Spark aggregations), so the driver's memory must not grow with the number of images:
the same is measured at 20x fewer images, side by side.

    .venv/bin/python benchmarks/run.py bench_scale            # 5,000 and 100,000 photos (long: ~1 h on 2 cores)
    .venv/bin/python benchmarks/run.py bench_scale --quick    # 500 and 5,000 photos
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import Result, table  # noqa: E402

from sparkvision.testing.proc import Sampler  # noqa: E402

TITLE = "Scale: 100,000 photos ingested and featurized on a standalone cluster, peak memory per process"
CLI = [sys.executable, "-m", "sparkvision.cli.main"]


def _env() -> dict[str, str]:
    return {**os.environ, "SPARKVISION_CACHE": os.environ.get("SPARKVISION_CACHE", str(ROOT / ".cache" / "sparkvision"))}


def _role(pid: int, driver: int, workers: set[int]) -> str | None:
    from sparkvision.testing.proc import cmdline

    line = cmdline(pid)
    if pid == driver:
        return "driver Python"
    if "pyspark.daemon" in line or "pyspark.worker" in line:
        return "Python workers (each)"
    if "CoarseGrainedExecutorBackend" in line:
        return "executor JVMs (each)"
    # pyspark starts the driver JVM as spark-submit; a short-lived launcher JVM builds its command first.
    if "java" in line and "deploy.SparkSubmit" in line and "launcher.Main" not in line:
        return "driver JVM"
    return None


class PeakSampler(Sampler):
    """Samples VmHWM of a driver's process tree and the workers' trees every ``period_s``."""

    def __init__(self, cluster, driver_pid: int, period_s: float = 1.0) -> None:
        super().__init__(period_s)
        self.cluster = cluster
        self.driver = driver_pid
        self.peaks: dict[int, tuple[str, float]] = {}

    def _sample(self) -> None:
        from sparkvision.testing.proc import descendants, peak_rss_mib

        workers = {d.pid for d in self.cluster.workers if d is not None}
        pids = [self.driver, *descendants(self.driver)]
        for daemon in self.cluster.workers:
            if daemon is not None:
                pids += descendants(daemon.pid)
        for pid in pids:
            role = _role(pid, self.driver, workers)
            peak = peak_rss_mib(pid)
            if role and peak is not None and peak > self.peaks.get(pid, ("", 0.0))[1]:
                self.peaks[pid] = (role, peak)

    def by_role(self) -> dict[str, dict[str, float]]:
        roles: dict[str, list[float]] = {}
        for role, peak in self.peaks.values():
            roles.setdefault(role, []).append(peak)
        return {role: {"max_mib": max(v), "processes": len(v)} for role, v in sorted(roles.items())}


def _run_app(cluster, cmd: list[str]) -> tuple[dict, dict, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    with PeakSampler(cluster, proc.pid) as sampler:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} failed:\n{stderr[-3000:]}")
    return json.loads(stdout), sampler.by_role(), wall


def measure(cluster, count: int, work: Path) -> dict:
    """Generate (or reuse) ``count`` photos, then ingest and featurize them as two applications."""
    from imagegen import generate

    started = time.perf_counter()
    folder = generate(count, ROOT / ".cache" / "bench-data" / f"photos-{count}", seed=2)
    generate_s = time.perf_counter() - started
    dataset, features = work / f"dataset-{count}", work / f"features-{count}"
    master = cluster.master_url
    ingest, ingest_mem, ingest_wall = _run_app(cluster, [
        *CLI, "ingest", str(folder), "--out", str(dataset), "--master", master, "--driver-memory", "1g",
        "--conf", "spark.executor.memory=1g", "-q"])
    feat, feat_mem, feat_wall = _run_app(cluster, [
        sys.executable, str(HERE / "scale_driver.py"), "--master", master, "--dataset", str(dataset),
        "--out", str(features)])
    assert ingest["rows"] == count and feat["rows"] == feat["paths"] == count, (ingest, feat)
    result = {
        "images": count, "generate_s": generate_s, "ingest": ingest, "ingest_wall_s": ingest_wall,
        "ingest_peaks": ingest_mem, "featurize": feat, "featurize_wall_s": feat_wall, "featurize_peaks": feat_mem,
        "dataset_mb": sum(p.stat().st_size for p in dataset.rglob("*.parquet")) / 1e6,
        "features_mb": sum(p.stat().st_size for p in features.rglob("*.parquet")) / 1e6,
    }
    shutil.rmtree(dataset, ignore_errors=True)
    shutil.rmtree(features, ignore_errors=True)
    return result


def run(quick: bool) -> Result:
    from sparkvision.config import ClusterSettings
    from sparkvision.testing.cluster import StandaloneCluster

    sizes = (500, 5_000) if quick else (5_000, 100_000)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=os.environ.get("TMPDIR")))
    try:
        with StandaloneCluster(work / "logs", ClusterSettings(workers=2, cores_per_worker=1,
                                                              worker_memory="2g")) as cluster:
            runs = [measure(cluster, count, work) for count in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = runs
    roles = sorted({role for r in runs for phase in ("ingest_peaks", "featurize_peaks") for role in r[phase]})

    def peak(r: dict, phase: str, role: str) -> float:
        return r[phase].get(role, {}).get("max_mib", float("nan"))

    rows = [[role, *[peak(r, phase, role) for phase in ("ingest_peaks", "featurize_peaks") for r in runs]]
            for role in roles]
    headers = ["process", *[f"{phase} {r['images']:,}" for phase in ("ingest", "featurize") for r in runs]]
    driver_growth = {phase: max(peak(large, f"{phase}_peaks", role) / peak(small, f"{phase}_peaks", role)
                                for role in ("driver Python", "driver JVM"))
                     for phase in ("ingest", "featurize")}
    f = large["featurize"]
    markdown = (
        f"{large['images']:,} photos (224 px JPEG variants of imagenette-mini, {large['generate_s']:.0f} s to make "
        f"or reuse) and, for comparison, {small['images']:,}; a standalone master + 2 one-core workers on "
        "loopback, executors of 1 GB heap. Peak resident memory (VmHWM, MiB) of each kind of process, the "
        "largest of its kind:\n\n"
        + table(["process", *headers[1:]], rows)
        + f"\n\nWith {large['images'] / small['images']:.0f}x the images the driver's peak grew "
        f"{driver_growth['ingest']:.2f}x during ingest and {driver_growth['featurize']:.2f}x during featurize "
        "(largest of its Python and JVM ratios): rows never come to the driver; the executors write the "
        "outputs and the driver only reads back counts. Ingest lists a local folder on the driver (one small "
        "row per file), which is the part that grows with the number of files.\n\n"
        f"Ingest of {large['images']:,}: {large['ingest']['rows']:,} rows ({large['ingest']['errors']} errors), "
        f"a {large['dataset_mb']:,.0f} MB dataset, {large['ingest_wall_s']:.0f} s with application start. "
        f"Featurize: {f['rows']:,} rows, each path exactly once ({f['paths']:,} distinct), {f['with_features']:,} "
        f"with features, {f['errors']} errors, {large['features_mb']:,.0f} MB of features, "
        f"{f['featurize_s']:.0f} s ({large['images'] / f['featurize_s']:.1f} images/s on 2 cores; "
        f"{large['featurize_wall_s']:.0f} s with application start).\n"
    )
    return Result(markdown, {"runs": runs, "driver_peak_growth": driver_growth})


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv).markdown)
