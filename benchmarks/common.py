"""Helpers shared by the benchmark modules: results, timing, peak memory."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The real data sets (../shared/data, or $SPARKVISION_SHARED_DATA).
SHARED_DATA = Path(os.environ.get("SPARKVISION_SHARED_DATA", ROOT.parent / "shared" / "data"))
IMAGENETTE = SHARED_DATA / "imagenette-mini"
# Exported ONNX graphs are cached per checkout (as in the tests), not in the user's home.
os.environ.setdefault("SPARKVISION_CACHE", str(ROOT / ".cache" / "sparkvision"))


@dataclass
class Result:
    """A benchmark's Markdown section and its raw figures (written to results/<name>.json)."""

    markdown: str
    figures: dict[str, Any] = field(default_factory=dict)


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs, and the last run's value."""
    best = float("inf")
    value = None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def transform_runs(spark, stage, folder: Path, rows: int, repeat: int) -> tuple[float, list[float]]:
    """Seconds of ``stage.transform`` over the images of ``folder`` (written to Spark's noop sink): the first
    run (cold: model broadcast, worker sessions) and ``repeat`` warm ones; every row must reach the model once."""
    from sparkvision.io import load_images

    times = []
    for _ in range(1 + repeat):
        frame = load_images(spark, str(folder), probe="header")
        start = time.perf_counter()
        stage.transform(frame).write.format("noop").mode("overwrite").save()
        times.append(time.perf_counter() - start)
    assert stage.rows_processed == rows * (1 + repeat), stage.rows_processed
    return times[0], times[1:]


def imagenet_model(out: Path) -> Path:
    """A model directory of kind ``onnx``: pretrained EfficientNet-Lite0 and its 1000 ImageNet labels."""
    import shutil

    from sparkvision.models import get_spec
    from sparkvision.models.model_dir import ModelCard, save_card
    from sparkvision.models.onnx_export import registered_onnx

    spec = get_spec("efficientnet_lite0")
    out.mkdir(parents=True)
    shutil.copyfile(registered_onnx("efficientnet_lite0"), out / "model.onnx")
    save_card(out, ModelCard(name="imagenet-lite0", kind="onnx", labels=list(spec.labels),
                             preprocess=spec.preprocess, architecture="efficientnet_lite0"))
    return out


def predict_rate(spark, model_dir, src: str, warm_runs: int = 1) -> dict[str, Any]:
    """Images/s of a model directory on ``src``: its predictions to Spark's noop sink, cold then warm."""
    from sparkvision.inference.predict import load_model
    from sparkvision.io import load_images

    model = load_model(model_dir)
    rows = load_images(spark, src, probe="header").count()
    times = []
    for _ in range(1 + warm_runs):
        frame = load_images(spark, src, probe="header")
        started = time.perf_counter()
        model.predictions(frame).write.format("noop").mode("overwrite").save()
        times.append(time.perf_counter() - started)
    return {"rows": rows, "cold_seconds": times[0], "warm_seconds": min(times[1:]),
            "images_per_s": rows / min(times[1:])}


def cpu_by_process() -> dict[str, float]:
    """CPU seconds so far of this benchmark's processes: this driver, the Spark JVM(s) it started, and
    the Python processes below them (pyspark's daemon and workers: decode, model, Arrow and pandas)."""
    from sparkvision.testing.proc import cmdline, cpu_seconds, descendants, is_python

    out = {"driver": cpu_seconds(os.getpid()), "jvm": 0.0, "python workers": 0.0}
    for pid in descendants():
        if is_python(pid):
            out["python workers"] += cpu_seconds(pid)
        elif "java" in cmdline(pid).split(" ", 1)[0]:
            out["jvm"] += cpu_seconds(pid)
    return out


def peak_rss_mib(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
