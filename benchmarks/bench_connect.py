"""Batch predict over Spark Connect against a classic session: the same photos, model and cores, one run.

The model is pretrained EfficientNet-Lite0 with its ImageNet labels (a model directory of kind ``onnx``);
the photos are imagenette-mini's val split (400; ``--quick``: 100, ten per class). Each side is its own
process, as a user runs it: a classic embedded ``local[2]`` session, and a Connect client of a
``SparkConnectServer`` on loopback with ``local[2]`` (started from the installed pyspark). Each runs the
saved model on the photos to Spark's noop sink, cold (model shipped, worker sessions built) then warm.

    .venv/bin/python benchmarks/run.py connect           # a few minutes on 2 idle cores
    .venv/bin/python benchmarks/run.py connect --quick
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import IMAGENETTE, Result, imagenet_model, predict_rate, table  # noqa: E402

TITLE = "Batch predict over Spark Connect against a classic session (same photos, model and cores)"
WARM_RUNS = 2


def photos(out: Path, per_class: int | None) -> Path:
    """imagenette-mini val, or its first ``per_class`` photos of each class (links)."""
    if per_class is None:
        return IMAGENETTE / "val"
    for folder in sorted((IMAGENETTE / "val").iterdir()):
        (out / folder.name).mkdir(parents=True)
        for file in sorted(folder.iterdir())[:per_class]:
            (out / folder.name / file.name).symlink_to(file)
    return out


def measure(remote: str | None, model_dir: str, src: str) -> dict:
    """In a child process: the session (classic local[2], or Connect to ``remote``), then cold and warm runs."""
    from sparkvision.config import SparkSettings
    from sparkvision.inference.predict import load_model
    from sparkvision.io import load_images
    from sparkvision.session import get_spark

    spark = get_spark(SparkSettings(master="local[2]", remote=remote, driver_memory="2g", app_name="bench-connect"))
    rate = predict_rate(spark, model_dir, src, WARM_RUNS)
    counted = load_model(model_dir).predictions(load_images(spark, src, probe="header")).where("error IS NULL").count()
    return {**rate, "predicted": counted}


def child(remote: str | None, model_dir: Path, src: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    command = [sys.executable, __file__, "--measure", remote or "", str(model_dir), str(src)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> Result:
    from sparkvision.testing.connect import ConnectServer

    work = Path(tempfile.mkdtemp(prefix="bench-connect-"))
    try:
        model_dir = imagenet_model(work / "model")
        src = photos(work / "photos", 10 if quick else None)
        classic = child(None, model_dir, src)
        with ConnectServer(work / "server", cores=2) as server:
            connect = child(server.url, model_dir, src)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert classic["predicted"] == connect["predicted"] == classic["rows"], (classic, connect)
    rows = [[name, r["rows"], f"{r['cold_seconds']:.1f}", f"{r['warm_seconds']:.1f}", f"{r['images_per_s']:.1f}"]
            for name, r in (("classic session, local[2]", classic), ("Spark Connect client, server local[2]", connect))]
    ratio = connect["images_per_s"] / classic["images_per_s"]
    markdown = "\n\n".join([
        "The saved model (pretrained EfficientNet-Lite0, kind `onnx`) on imagenette-mini val photos to Spark's noop "
        f"sink, each side in its own process on the same 2 cores: cold, then the best of {WARM_RUNS} warm runs. Over "
        "Connect the graph reaches executors as a session artifact (`spark.addArtifacts`), on a classic session "
        "as a broadcast; the UDF and its per-worker ONNX Runtime session are the same.",
        table(["session", "photos", "cold s", "warm s", "images/s (warm)"], rows),
        f"Over Connect: {ratio:.2f}x the classic session's warm throughput.",
    ])
    return Result(markdown, {"classic": classic, "connect": connect, "ratio": ratio})


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--measure":
    print(json.dumps(measure(sys.argv[2] or None, sys.argv[3], sys.argv[4])))
