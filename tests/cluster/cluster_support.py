"""What the cluster tests share: CLI subprocesses, waiting on executors and tasks, comparing outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SPARKVISION = [sys.executable, "-m", "sparkvision.cli.main"]


def executor_count(spark) -> int:
    """Executors registered with the driver (the driver itself not counted)."""
    return spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1


def wait_for_executors(spark, count: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while executor_count(spark) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {executor_count(spark)} of {count} executors registered")
        time.sleep(0.5)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("SPARKVISION_CACHE", str(ROOT / ".cache" / "sparkvision"))
    return env


def run_cli(args: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """A ``sparkvision`` command in its own process, as a user runs it; stdout parsed by the caller."""
    proc = subprocess.run([*SPARKVISION, *args], capture_output=True, text=True, timeout=timeout, env=cli_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"sparkvision {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def cli_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout)


def run_cli_inprocess(args: list[str]) -> int:
    """A ``sparkvision`` command in this process: it reuses the active (cluster) session."""
    from sparkvision.cli.main import main

    return main(args)


class Background:
    """Run ``fn`` in a thread; ``result()`` joins and re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any], spark=None, group: str | None = None) -> None:
        from pyspark import InheritableThread

        self._value: Any = None
        self._error: BaseException | None = None

        def target() -> None:
            if group is not None:
                spark.sparkContext.setJobGroup(group, group)
            try:
                self._value = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._error = exc

        self._thread = InheritableThread(target=target, daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout: float = 600) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("background job still running")
        if self._error is not None:
            raise self._error
        return self._value


def task_counts(spark) -> tuple[int, int, int]:
    """(active, completed, failed) tasks over the stages running now."""
    tracker = spark.sparkContext.statusTracker()
    active = completed = failed = 0
    for stage_id in tracker.getActiveStageIds():
        info = tracker.getStageInfo(stage_id)
        if info is not None:
            active += info.numActiveTasks
            completed += info.numCompletedTasks
            failed += info.numFailedTasks
    return active, completed, failed


def wait_until_tasks_run(spark, job: Background, active: int, completed: int = 0,
                         timeout_s: float = 300.0) -> tuple[int, int, int]:
    """Block until ``active`` tasks run at once after ``completed`` have finished (the moment to kill)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = task_counts(spark)
        if counts[0] >= active and counts[1] >= completed:
            return counts
        if not job.running():
            job.result()
            raise AssertionError(f"the job finished before {active} tasks ran at once (last seen {counts})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"tasks never reached {active} active / {completed} completed (last {counts})")
        time.sleep(0.05)


def failed_tasks(spark, group: str) -> int:
    """Failed task attempts in the jobs of ``group`` (a killed executor's tasks count here)."""
    tracker = spark.sparkContext.statusTracker()
    failed = 0
    for job_id in tracker.getJobIdsForGroup(group):
        job = tracker.getJobInfo(job_id)
        for stage_id in job.stageIds if job else []:
            info = tracker.getStageInfo(stage_id)
            failed += info.numFailedTasks if info else 0
    return failed


def same_rows(left, right) -> bool:
    """Two DataFrames hold the same multiset of rows (compared in Spark, nothing collected)."""
    return left.exceptAll(right).limit(1).count() == 0 and right.exceptAll(left).limit(1).count() == 0


def wait_cluster_idle(cluster, timeout_s: float = 120.0) -> None:
    """Until no application holds the cluster's cores (a killed driver's application is removed)."""
    deadline = time.monotonic() + timeout_s
    while cluster.status().get("activeapps"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"applications still hold the cluster: {cluster.status()['activeapps']}")
        time.sleep(0.5)
