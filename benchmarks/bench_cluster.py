"""Training on a real Spark standalone cluster: 1 vs 2 workers, next to a plain PyTorch loop.

A master and two one-core workers on loopback (``sparkvision.testing.cluster``), and
``sparkvision train --master spark://...``: TorchDistributor in cluster mode, each rank
a barrier task running on its own executor (1 torch thread = the task's core). Same
data, model, optimiser and global batch as ``bench_train`` (whose plain loop is rerun
here, in this run, as the reference): LeNet-5 on Fashion-MNIST (quick: mnist-5k).

Scaling efficiency = samples/s with 2 workers / (2 x samples/s with 1 worker).

    .venv/bin/python benchmarks/run.py bench_cluster [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_train import BATCH, LR, MOMENTUM, dataset, plain_loop, sparkvision_train  # noqa: E402
from common import Result, table  # noqa: E402

TITLE = "Training on a standalone Spark cluster: scaling from 1 to 2 workers"


def cluster_train(master: str, train_uri: str, val_uri: str, epochs: int, workers: int, out: Path) -> dict:
    figures = sparkvision_train(train_uri, val_uri, epochs, workers, out, spark=(
        "--master", master, "--driver-memory", "1g", "--conf", "spark.executor.memory=1g"))
    card = json.loads((out / "sparkvision_model.json").read_text())
    assert card["provenance"]["local_mode"] is False, "expected TorchDistributor in cluster mode"
    return {**figures, "threads_per_worker": card["provenance"]["threads_per_worker"]}


def run(quick: bool) -> Result:
    from sparkvision.config import ClusterSettings
    from sparkvision.testing.cluster import StandaloneCluster

    if quick:
        train_src, val_src, epochs = "mnist-5k", "digits", 2
    else:
        train_src, val_src, epochs = "fashion-mnist:train", "fashion-mnist:test", 3
    train_uri, val_uri = dataset(train_src), dataset(val_src)
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir=os.environ.get("TMPDIR")))
    try:
        import torch

        rows = {"plain PyTorch loop (1 process, all cores)": plain_loop(train_uri, val_uri, epochs)}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per-core reference: what one rank has
        try:
            rows["plain PyTorch loop, 1 thread"] = plain_loop(train_uri, val_uri, epochs)
        finally:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        with StandaloneCluster(work / "logs", ClusterSettings(workers=2, cores_per_worker=1,
                                                              worker_memory="2g")) as cluster:
            cluster_start = time.perf_counter() - started
            for workers in (1, 2):
                rows[f"sparkvision train on the cluster, {workers} worker{'s' if workers > 1 else ''}"] = (
                    cluster_train(cluster.master_url, train_uri, val_uri, epochs, workers, work / f"m{workers}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = list(rows)
    base, one, two = rows[names[0]], rows[names[2]], rows[names[3]]
    efficiency = two["samples_per_s"] / (2 * one["samples_per_s"])
    body = table(
        ["path", "train samples/s (median epoch)", "vs plain loop", "end-to-end wall s", "val top-1"],
        [[name, r["samples_per_s"], r["samples_per_s"] / base["samples_per_s"], r["wall_s"], r["val_top1"]]
         for name, r in rows.items()],
    )
    markdown = (
        f"LeNet-5 on {train_src} ({epochs} epochs, global batch {BATCH}, SGD {LR} momentum {MOMENTUM}); a "
        f"standalone master + 2 workers of 1 core each on loopback (started in {cluster_start:.0f} s). "
        f"Each rank is a barrier task with 1 torch thread; the plain loop runs in one process with every core, "
        f"then with 1 thread (what one rank has).\n\n"
        f"{body}\n\n"
        f"Scaling from 1 to 2 workers: **{two['samples_per_s'] / one['samples_per_s']:.2f}x** samples/s, "
        f"efficiency {efficiency:.2f} (1.0 = linear). Each step ends with a gloo all-reduce of the "
        f"gradients between the two executors over TCP. End-to-end wall time adds the fixed start-up of each "
        f"run (application and executors, torchrun on each executor, ONNX export).\n"
    )
    figures = {"train": train_src, "val": val_src, "epochs": epochs, "batch": BATCH, "rows": rows,
               "scaling_1_to_2": two["samples_per_s"] / one["samples_per_s"], "efficiency": efficiency,
               "cluster_start_s": cluster_start}
    return Result(markdown, figures)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv).markdown)
