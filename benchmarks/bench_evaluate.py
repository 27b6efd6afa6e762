"""``sparkvision evaluate`` on 100k and 1M synthetic predictions: driver memory must not grow with rows.

Each size is generated in Spark (``sparkvision.testing.synthetic_predictions``, no row passes
through a driver) into Parquet, then the real CLI runs in a subprocess while this
process samples the peak resident memory (``VmHWM``) of the CLI's Python process, of
the JVM it starts (in local mode the driver JVM also runs the tasks) and of the
Python workers. Side by side, the same predictions are judged the way many
notebooks do it, ``toPandas()`` + scikit-learn on the driver, whose memory grows with
the rows; its accuracy also cross-checks the CLI's. Finally the largest set is
evaluated once more with the smallest driver heap Spark accepts (512m).

    .venv/bin/python benchmarks/run.py evaluate            # 100k and 1M rows
    .venv/bin/python benchmarks/run.py evaluate --quick    # 20k and 100k rows
"""

from __future__ import annotations

import json
import os
import re
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

from sparkvision.testing.proc import Sampler, cmdline, descendants, status_kib  # noqa: E402

TITLE = "Evaluation at scale: driver memory vs rows"
CLASSES = 10
DRIVER_MEMORY = "1g"
MASTER = "local[2]"
ROWS_PER_FILE = 100_000
#: Spark refuses a driver below ~470 MB; 512m is the smallest heap it runs with.
TIGHT_DRIVER_MEMORY = "512m"


class PeakMemory(Sampler):
    """Samples a process tree; keeps each process's peak RSS (VmHWM), grouped by role."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(interval)
        self.pid = pid
        self.peaks: dict[int, tuple[str, int]] = {}

    def _role(self, pid: int) -> str:
        if pid == self.pid:
            return "driver_python"
        cmd = cmdline(pid)
        if "java" in cmd.split(" ", 1)[0]:
            return "jvm"
        if "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
            return "python_workers"
        return "other"

    def _sample(self) -> None:
        for pid in [self.pid, *descendants(self.pid)]:
            hwm = status_kib(pid, "VmHWM")
            if hwm:
                role = self._role(pid)  # every time: spark-class exec's the JVM in a shell's pid
                self.peaks[pid] = (role, max(hwm, self.peaks.get(pid, ("", 0))[1]))

    def mib(self) -> dict[str, float]:
        """Peak MiB per role: the largest single process for the driver and JVM, the sum for workers."""
        out = {"driver_python": 0.0, "jvm": 0.0, "python_workers": 0.0}
        for role, kib in self.peaks.values():
            if role == "python_workers":
                out[role] += kib / 1024
            elif role in out:
                out[role] = max(out[role], kib / 1024)
        return out


_GC_LINE = re.compile(r"Pause .*? (\d+)M->(\d+)M\((\d+)M\)")


def driver_java_options(gc_log: Path) -> str:
    """sparkvision's own driver JVM options plus a GC log (what the heap holds after each collection)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from sparkvision.config import SparkSettings
    from sparkvision.session import build_conf

    base = build_conf(SparkSettings())["spark.driver.extraJavaOptions"]
    return f"{base} -Xlog:gc:file={gc_log}"


def heap_after_gc_mib(gc_log: Path) -> float:
    """The largest heap occupancy right after a collection: an upper bound of what the JVM kept alive."""
    if not gc_log.is_file():
        return float("nan")
    after = [int(m.group(2)) for m in _GC_LINE.finditer(gc_log.read_text(errors="replace"))]
    return float(max(after)) if after else 0.0


def _run_measured(cmd: list[str], env: dict[str, str], check: bool = True) -> tuple[float, dict[str, float], str]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    with PeakMemory(proc.pid) as peak:
        out, err = proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        if check:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
        return elapsed, peak.mib(), "FAILED: " + _failure(err.decode())
    return elapsed, peak.mib(), out.decode()


def _failure(stderr: str) -> str:
    """The first line that names an error, not a stack frame."""
    for needle in ("OutOfMemoryError", "Java heap space", "GC overhead", "maxResultSize"):
        if needle in stderr:
            line = next(line for line in stderr.splitlines() if needle in line)
            return line.strip()[:200]
    lines = [line.strip() for line in stderr.splitlines()
             if ("Error" in line or "Exception" in line) and not line.lstrip().startswith("at ")]
    return lines[-1][:200] if lines else "unknown"


def _generate(rows: int, out: str) -> None:
    from sparkvision.config import SparkSettings
    from sparkvision.session import get_spark
    from sparkvision.testing.synthetic_predictions import synthetic_labels, synthetic_predictions

    spark = get_spark(SparkSettings(master=MASTER, driver_memory=DRIVER_MEMORY))
    # Files of ROWS_PER_FILE rows, as a predict job writes one file per partition: Parquet readers hold a
    # row group's column chunks in memory, so equal file sizes keep that cost out of the comparison.
    partitions = max(1, rows // ROWS_PER_FILE)
    synthetic_predictions(spark, rows, CLASSES, seed=rows, partitions=partitions).write.mode("overwrite").parquet(out)
    Path(out + ".labels.txt").write_text("\n".join(synthetic_labels(CLASSES)) + "\n")
    spark.stop()


def _naive(predictions: str, driver_memory: str = DRIVER_MEMORY) -> None:
    """The collect-everything way: toPandas, then scikit-learn on the driver."""
    import numpy as np
    from sklearn.metrics import accuracy_score, log_loss

    from sparkvision.config import SparkSettings
    from sparkvision.session import get_spark
    from sparkvision.testing.synthetic_predictions import synthetic_labels

    conf = {"spark.driver.maxResultSize": "0"}
    if os.environ.get("BENCH_DRIVER_JAVA_OPTIONS"):
        conf["spark.driver.extraJavaOptions"] = os.environ["BENCH_DRIVER_JAVA_OPTIONS"]
    spark = get_spark(SparkSettings(master=MASTER, driver_memory=driver_memory, conf=conf))
    frame = spark.read.parquet(predictions).toPandas()
    ok = frame[frame["error"].isna() & frame["label"].notna()]
    prob = np.stack(ok["probability"].to_numpy())
    labels = synthetic_labels(CLASSES)
    print(json.dumps({"accuracy": accuracy_score(ok["label"], ok["prediction"]),
                      "log_loss": log_loss(ok["label"], prob, labels=labels)}))
    spark.stop()


def run(quick: bool = False) -> Result:
    sizes = [20_000, 100_000] if quick else [100_000, 1_000_000]
    env = {**os.environ, "SPARKVISION_CACHE": os.environ.get("SPARKVISION_CACHE", str(ROOT / ".cache" / "sparkvision"))}
    cli = str(Path(sys.executable).with_name("sparkvision"))
    work = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    figures: dict[str, dict] = {}
    try:
        for rows in sizes:
            data = str(work / f"pred-{rows}")
            subprocess.run([sys.executable, __file__, "generate", str(rows), data], check=True, env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            on_disk = sum(f.stat().st_size for f in Path(data).rglob("*.parquet")) / 2**20
            gc_log = work / f"gc-evaluate-{rows}.log"
            seconds, peak, out = _run_measured(
                [cli, "evaluate", "--master", MASTER, "--driver-memory", DRIVER_MEMORY, "-q",
                 "--conf", f"spark.driver.extraJavaOptions={driver_java_options(gc_log)}",
                 "--predictions", data, "--labels", data + ".labels.txt", "--out", str(work / f"report-{rows}")],
                env,
            )
            peak["jvm_heap_after_gc"] = heap_after_gc_mib(gc_log)
            metrics = json.loads(out)
            naive_gc = work / f"gc-naive-{rows}.log"
            naive_seconds, naive_peak, naive_out = _run_measured(
                [sys.executable, __file__, "naive", data],
                {**env, "BENCH_DRIVER_JAVA_OPTIONS": driver_java_options(naive_gc)},
            )
            naive_peak["jvm_heap_after_gc"] = heap_after_gc_mib(naive_gc)
            naive = json.loads(naive_out.strip().splitlines()[-1])
            figures[str(rows)] = {
                "rows": rows, "parquet_mib": on_disk, "evaluate_seconds": seconds, "evaluate_peak_mib": peak,
                "naive_seconds": naive_seconds, "naive_peak_mib": naive_peak,
                "accuracy": metrics["accuracy"], "naive_accuracy": naive["accuracy"],
                "log_loss": metrics["log_loss"], "naive_log_loss": naive["log_loss"],
                "evaluated_rows": metrics["evaluated_rows"], "error_rows": metrics["error_rows"],
                "unlabeled_rows": metrics["unlabeled_rows"],
            }
        # The same largest set with the smallest driver heap Spark accepts: evaluate must still finish.
        data = str(work / f"pred-{sizes[-1]}")
        tight_seconds, tight_peak, tight_out = _run_measured(
            [cli, "evaluate", "--master", MASTER, "--driver-memory", TIGHT_DRIVER_MEMORY, "-q",
             "--predictions", data, "--labels", data + ".labels.txt", "--out", str(work / "report-tight")],
            env, check=False,
        )
        tight = {
            "driver_memory": TIGHT_DRIVER_MEMORY, "rows": sizes[-1],
            "evaluate": "ok" if not tight_out.startswith("FAILED") else tight_out,
            "evaluate_accuracy": json.loads(tight_out)["accuracy"] if not tight_out.startswith("FAILED") else None,
            "evaluate_seconds": tight_seconds, "evaluate_peak_mib": tight_peak,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    small, large = (figures[str(s)] for s in sizes)
    table_rows = []
    for f in (small, large):
        e, n = f["evaluate_peak_mib"], f["naive_peak_mib"]
        table_rows.append([f"{f['rows']:,}", f"{f['parquet_mib']:.0f}", f"{e['driver_python']:.0f}",
                           f"{e['jvm']:.0f}", f"{e['jvm_heap_after_gc']:.0f}", f"{e['python_workers']:.0f}",
                           f"{f['evaluate_seconds']:.0f}", f"{n['driver_python']:.0f}", f"{n['jvm']:.0f}",
                           f"{n['jvm_heap_after_gc']:.0f}", f"{f['naive_seconds']:.0f}"])
    growth = {
        "evaluate_driver_python": large["evaluate_peak_mib"]["driver_python"] / small["evaluate_peak_mib"]["driver_python"],
        "evaluate_jvm": large["evaluate_peak_mib"]["jvm"] / small["evaluate_peak_mib"]["jvm"],
        "evaluate_jvm_heap_after_gc": large["evaluate_peak_mib"]["jvm_heap_after_gc"]
        / small["evaluate_peak_mib"]["jvm_heap_after_gc"],
        "naive_jvm_heap_after_gc": large["naive_peak_mib"]["jvm_heap_after_gc"]
        / small["naive_peak_mib"]["jvm_heap_after_gc"],
        "naive_driver_python": large["naive_peak_mib"]["driver_python"] / small["naive_peak_mib"]["driver_python"],
    }
    agree = all(abs(f["accuracy"] - f["naive_accuracy"]) < 1e-12 and abs(f["log_loss"] - f["naive_log_loss"]) < 1e-9
                for f in (small, large))
    markdown = "\n".join([
        f"Synthetic predictions ({CLASSES} classes, 1% error rows, 1% unlabeled) generated in Spark, "
        f"{ROWS_PER_FILE:,} rows per Parquet file; "
        f"`sparkvision evaluate` run as a subprocess with `--master {MASTER} --driver-memory {DRIVER_MEMORY}`; "
        "peak resident memory (VmHWM) sampled from /proc. 'naive' = `toPandas()` + scikit-learn on the "
        "same Parquet, same session settings.",
        "",
        table(["rows", "Parquet MiB", "evaluate: driver Python MiB", "evaluate: JVM RSS MiB",
               "evaluate: JVM heap after GC MiB", "evaluate: workers MiB", "evaluate s",
               "naive: driver Python MiB", "naive: JVM RSS MiB", "naive: JVM heap after GC MiB", "naive s"],
              table_rows),
        "",
        f"Peak growth from {small['rows']:,} to {large['rows']:,} rows ({large['rows'] // small['rows']}x): "
        f"evaluate driver Python x{growth['evaluate_driver_python']:.2f}, evaluate JVM heap after GC "
        f"x{growth['evaluate_jvm_heap_after_gc']:.2f} (JVM RSS x{growth['evaluate_jvm']:.2f}); naive driver Python "
        f"x{growth['naive_driver_python']:.2f}, naive JVM heap after GC x{growth['naive_jvm_heap_after_gc']:.2f}.",
        "",
        "RSS of a JVM rises towards its heap limit as it reads more data (G1 grows the heap rather than "
        "collecting more often), whether or not anything is kept; the heap occupancy right after each "
        "collection (from `-Xlog:gc`) is what the driver actually holds on to.",
        f"Accuracy and log loss of evaluate and of scikit-learn on the collected rows agree: {agree}.",
        "",
        f"With `--driver-memory {TIGHT_DRIVER_MEMORY}` on the {sizes[-1]:,} rows: evaluate "
        f"**{tight['evaluate']}** ({tight['evaluate_seconds']:.0f} s, JVM RSS "
        f"{tight['evaluate_peak_mib']['jvm']:.0f} MiB, driver Python {tight['evaluate_peak_mib']['driver_python']:.0f} "
        f"MiB, accuracy {tight['evaluate_accuracy']}).",
    ])
    return Result(markdown, {"sizes": figures, "growth": growth, "metrics_agree": agree, "tight_heap": tight})


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "generate":
        _generate(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) >= 2 and sys.argv[1] == "naive":
        _naive(sys.argv[2], *sys.argv[3:4])
    else:
        quick = "--quick" in sys.argv
        result = run(quick)
        print(result.markdown)
        print(json.dumps(result.figures, indent=2))
