"""``sparkvision train`` on the standalone cluster: TorchDistributor in cluster mode (each rank a barrier
task on an executor), a rank killed mid-run, and ``--resume`` finishing it to the embedded run's result.

Training is deterministic for a given seed and world size, so the cluster run, interrupted
and resumed, must end with exactly the metrics of the embedded (local_mode) run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cluster_support import SPARKVISION, cli_env, cli_json, run_cli, wait_cluster_idle

from sparkvision.testing.proc import cmdline, descendants

pytestmark = pytest.mark.cluster

EPOCHS = 6
#: Metrics that depend on timing or on the interruption, not on what was learned.
TIMING = {"train_samples_per_s", "data_load_seconds", "resumed_from_epoch", "onnx_max_abs_diff"}


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, str]:
    """scikit-learn's 1,797 real 8x8 digit scans as a dataset, and a work directory for the 80/20 split.

    Ingested by an embedded run (this process's application may already be gone); the
    first training run writes the split and the others reuse it (same sources, same seed).
    """
    root = tmp_path_factory.mktemp("digits")
    run_cli(["ingest", "digits", "--out", str(root / "all"), "--master", "local[2]", "--driver-memory", "1g"])
    return {"train": str(root / "all"), "work": str(root / "work")}


def train_args(ds: dict[str, str], out, master: str, *extra: str) -> list[str]:
    return ["train", "--arch", "lenet5", "--train", ds["train"], "--val-fraction", "0.2", "--work-dir", ds["work"],
            "--keep-work", "--epochs", str(EPOCHS),
            "--batch-size", "64", "--workers", "2", "--seed", "11", "--out", str(out), "--master", master,
            "--driver-memory", "1g", "--conf", "spark.executor.memory=1g", *extra]


def learned(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def rank_processes(cluster) -> list[int]:
    """The training processes torchrun started under the workers' executors."""
    pids = []
    for daemon in cluster.workers:
        for pid in descendants(daemon.pid):
            tokens = cmdline(pid).split()
            # "python -u /tmp/.../train.py", not torchrun ("-m torch.distributed.run ... train.py") above it
            if tokens and tokens[-1].endswith("/train.py") and "-m" not in tokens:
                pids.append(pid)
    return pids


def test_a_killed_rank_fails_the_run_cleanly_and_resume_finishes_it_like_the_embedded_run(
        digits, cluster_released, tmp_path):
    cluster = cluster_released
    # The embedded reference trains alongside the cluster runs; they start once it has
    # written the split they all read (work/prepared.json is written after the parts).
    pool = ThreadPoolExecutor(1)
    embedded_run = pool.submit(run_cli, train_args(digits, tmp_path / "embedded", "local[2]"))
    pool.shutdown(wait=False)
    deadline = time.monotonic() + 300
    while not (Path(digits["work"]) / "prepared.json").exists():
        if embedded_run.done():
            embedded_run.result()  # raises what went wrong
            break
        assert time.monotonic() < deadline, "the embedded run wrote no split within 5 minutes"
        time.sleep(0.2)

    out = tmp_path / "on-cluster"
    wait_cluster_idle(cluster)
    proc = subprocess.Popen([*SPARKVISION, *train_args(digits, out, cluster.master_url)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        ranks: list[int] = []
        while not (out / "checkpoints" / "epoch-0001.pt").exists():
            assert proc.poll() is None, f"the run ended before its first checkpoint:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            ranks = rank_processes(cluster) or ranks
            time.sleep(0.05)
        ranks = rank_processes(cluster) or ranks
        assert len(ranks) == 2, "both ranks run as executor tasks (cluster mode), not on the driver"
        os.kill(ranks[-1], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, stderr[-3000:]
    assert stdout.strip() == ""  # no result printed
    # Spark and torchrun log the dead rank's traceback on the way; the command ends with one clear line.
    errors = [line for line in stderr.splitlines() if " ERROR sparkvision" in line]
    assert errors and "training failed" in errors[-1] and "--resume" in errors[-1], stderr[-3000:]
    assert "checkpoint" in errors[-1]
    after = stderr[stderr.rindex(errors[-1]):].splitlines()
    assert not [line for line in after if line.startswith("Traceback")], "an exception escaped the command"
    assert not (out / "sparkvision_model.json").exists()

    wait_cluster_idle(cluster)
    resumed = cli_json(run_cli(train_args(digits, out, cluster.master_url, "--resume")))
    embedded = cli_json(embedded_run.result(timeout=600))
    assert embedded["metrics"]["epochs_run"] == EPOCHS
    assert 1 <= resumed["metrics"]["resumed_from_epoch"] < EPOCHS
    assert resumed["metrics"]["epochs_run"] == EPOCHS
    assert learned(resumed["metrics"]) == learned(embedded["metrics"])
    card = json.loads((out / "sparkvision_model.json").read_text())
    assert card["provenance"]["local_mode"] is False and card["provenance"]["workers"] == 2
