"""Progress bars for long work: Spark jobs (polled from the status tracker) and local loops."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

if TYPE_CHECKING:  # local bars (optimize, export, serving tools) need no Spark
    from pyspark.sql import SparkSession


def progress_enabled() -> bool:
    """Bars only where someone is watching: an interactive terminal."""
    return sys.stderr.isatty()


@contextmanager
def spark_progress(spark: SparkSession, desc: str, poll_seconds: float = 0.5) -> Iterator[None]:
    """Show one bar of finished/total tasks for the Spark jobs run inside the block.

    Spark's own console bar is switched off (it interleaves with logging); this one
    reads the same numbers from ``statusTracker`` in a background thread. Over Spark Connect
    there is no status tracker on the client: the block runs without a bar.
    """
    from sparkvision.session import is_connect

    if not progress_enabled() or is_connect(spark):
        yield
        return
    sc = spark.sparkContext
    group = f"sparkvision-{desc}-{id(threading.current_thread())}"
    sc.setJobGroup(group, desc, interruptOnCancel=False)
    stop = threading.Event()
    tracker = sc.statusTracker()
    bar = tqdm(desc=desc, unit="task", leave=False)

    def poll() -> None:
        while not stop.wait(poll_seconds):
            total = done = 0
            for job_id in tracker.getJobIdsForGroup(group):
                job = tracker.getJobInfo(job_id)
                if job is None:
                    continue
                for stage_id in job.stageIds:
                    stage = tracker.getStageInfo(stage_id)
                    if stage is not None:
                        total += stage.numTasks
                        done += stage.numCompletedTasks
            bar.total = max(total, 1)
            bar.n = done
            bar.refresh()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
        sc.setLocalProperty("spark.jobGroup.id", None)


def local_progress(iterable, desc: str, total: int | None = None, unit: str = "it"):
    """A tqdm bar for driver-side loops, silent when nobody watches (``iterable`` None: call ``update``)."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not progress_enabled(), leave=False)
