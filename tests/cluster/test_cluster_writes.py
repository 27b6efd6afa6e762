"""A predict job killed while it writes leaves the existing output exactly as it was.

The job is a real ``sparkvision predict --overwrite`` application on the cluster; it is
killed (driver process group, SIGKILL) once its tasks have begun committing files, the
worst moment for a non-atomic writer. sparkvision writes into a staging directory and
renames it into place only after checking it, so readers see the old output whole.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cluster_support import SPARKVISION, cli_env, wait_cluster_idle

pytestmark = pytest.mark.cluster


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _committed_parts(target: Path) -> list[Path]:
    """Part files of finished tasks inside a staging directory of ``target`` (not yet in place)."""
    return [p for staging in target.parent.glob(f".{target.name}.staging-*")
            for p in staging.rglob("part-*") if "/_temporary/0/task_" in str(p)]


def test_predict_killed_mid_write_leaves_the_old_output_whole(predictions, model_dir, imagenette,
                                                              cluster_released):
    cluster = cluster_released
    target = Path(predictions)
    before = _files(target)
    wait_cluster_idle(cluster)
    proc = subprocess.Popen(
        [*SPARKVISION, "predict", "--model", str(model_dir), "--input", str(imagenette / "val"), "--out",
         predictions, "--overwrite", "--master", cluster.master_url, "--driver-memory", "1g",
         "--conf", "spark.executor.memory=1g", "--conf", f"spark.sql.files.maxPartitionBytes={256 * 1024}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(), start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not _committed_parts(target):
            assert proc.poll() is None, f"predict ended before writing:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its JVM: the whole command
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _files(target) == before, "the existing output changed"
    # What the dead job left is a hidden sibling, never the target (and is not read as it).
    leftovers = [p.name for p in target.parent.iterdir() if p != target]
    assert all(name.startswith(f".{target.name}.staging-") for name in leftovers)
    wait_cluster_idle(cluster)  # the master removed the dead driver's application and its executors
