"""Batch featurization against the tools users would pick instead, and a cost model for 10M images.

Same model (EfficientNet-Lite0, pooled 1280-d features, one ONNX graph), same images,
same cores, one run; each engine in its own fresh process (``peer_engines.py``), one
after the other:

* **ONNX Runtime alone** on tensors decoded beforehand: the ceiling, nothing but the model;
* **sparkvision** on Spark ``local[cores]``: list + read + decode + ONNX Runtime, Spark tasks;
* **Ray Data** ``read_binary_files`` + ``map_batches`` with an actor pool running the same
  ONNX graph, the same preprocessing and the same inner batch size;
* a **plain PyTorch loop**: read, decode, eager model, all cores.

Startup (session / ``ray.init`` / model load, plus what the first run costs more than a
warm one) is reported apart from steady state (the best warm run over every image). The
per-core figures (decode alone, the model alone on 1 thread) feed the cost model.

    .venv/bin/python benchmarks/run.py bench_peers            # 2,000 photos (made from the shipped ones)
    .venv/bin/python benchmarks/run.py bench_peers --quick    # 240 photos
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import Result, table  # noqa: E402

from sparkvision.inference.plan import resources_for  # noqa: E402

TITLE = "Featurization vs peers (ONNX Runtime ceiling, Ray Data, plain PyTorch) and a cost model for 10M images"

#: Images of the cost model, and the features each produces (1280 float32).
TARGET_IMAGES = 10_000_000
FEATURE_BYTES = 1280 * 4


def _env() -> dict[str, str]:
    return {**os.environ, "SPARKVISION_CACHE": os.environ.get("SPARKVISION_CACHE", str(ROOT / ".cache" / "sparkvision"))}


def engine(name: str, folder: Path, cores: int, repeat: int) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(HERE / "peer_engines.py"), name, "--folder", str(folder),
                           "--cores", str(cores), "--repeat", str(repeat)],
                          capture_output=True, text=True, env=_env())
    if done.returncode != 0:
        raise RuntimeError(f"engine {name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    warm = min(result["runs_s"][1:]) if len(result["runs_s"]) > 1 else result["runs_s"][0]
    result["steady_img_s"] = result["images"] / warm
    result["first_run_img_s"] = result["images"] / result["runs_s"][0]
    # What a user waits for before the first warm-speed image: session/model start + the first
    # run's extra time (workers starting, the model loading in each, JIT warm-up).
    result["startup_s"] = result["setup_s"] + max(0.0, result["runs_s"][0] - warm)
    return result


def images(quick: bool) -> tuple[Path, int]:
    from imagegen import generate

    count = 240 if quick else 2000
    folder = ROOT / ".cache" / "bench-data" / f"photos-{count}"
    generate(count, folder, seed=1)
    return folder, count


def cost_model(r: dict, cores: int, avg_bytes: float) -> tuple[str, dict]:
    """Cores and hours for TARGET_IMAGES from the measured per-core figures; where the time goes."""
    per_core = r["spark"]["steady_img_s"] / cores  # sparkvision, end to end, per task slot
    decode_s = 1 / r["decode"]["steady_img_s"]  # decode + resize + normalise, 1 core
    model_s = 1 / r["ort1"]["steady_img_s"]  # the model, 1 thread
    total_s = 1 / per_core
    other_s = max(0.0, total_s - decode_s - model_s)
    core_hours = TARGET_IMAGES / per_core / 3600
    rows = []
    for hours in (24, 8, 1):  # the sizing rule of `sparkvision plan`
        need = resources_for(TARGET_IMAGES, hours, per_core, 16, avg_bytes, FEATURE_BYTES)
        rows.append([f"finish in {hours} h", need["cores"], need["nodes"], need["read_mb_s"], need["write_mb_s"]])
    # Storage read rate at which reading, not computing, sets the pace (per 1 GB/s of read bandwidth).
    cores_per_gbs = 1e9 / (per_core * avg_bytes)
    figures = {
        "per_core_img_s": per_core, "decode_ms": decode_s * 1e3, "model_ms": model_s * 1e3,
        "spark_other_ms": other_s * 1e3, "core_hours_10m": core_hours, "avg_image_bytes": avg_bytes,
        "cores_saturating_1_gbs": cores_per_gbs,
        "plan": {row[0]: {"cores": row[1], "16_core_nodes": row[2], "read_mb_s": row[3], "write_mb_s": row[4]}
                 for row in rows},
    }
    shares = sorted([("the model", model_s), ("decode + resize + normalise", decode_s),
                     ("Spark, Arrow and Python around them", other_s)], key=lambda p: -p[1])
    parts = ", then ".join(f"{name} {sec / total_s:.0%}" for name, sec in shares)
    text = (
        "### Cost model: 10 million images\n\n"
        f"Measured per core (one Spark task slot, 1 ONNX thread): **{per_core:.1f} images/s** end to end, i.e. "
        f"{total_s * 1e3:.1f} ms per image = decode + resize + normalise {decode_s * 1e3:.1f} ms "
        f"({decode_s / total_s:.0%}) + model {model_s * 1e3:.1f} ms ({model_s / total_s:.0%}) + Spark, Arrow "
        f"and Python {other_s * 1e3:.1f} ms ({other_s / total_s:.0%}). Featurizing scales out without a "
        "shuffle (one narrow map per partition), so time = images / (cores x per-core rate):\n\n"
        f"* **{core_hours:,.0f} core-hours** for {TARGET_IMAGES:,} images "
        f"({avg_bytes / 1e3:.1f} KB JPEGs of 224 px like these; cost grows with pixels decoded, "
        "roughly with megapixels for larger photos, which JPEG draft decoding partly offsets).\n\n"
        + table(["target", "cores", "16-core nodes", "images read, MB/s", "features written, MB/s"], rows)
        + "\n\nWhere the bottleneck moves:\n\n"
        f"1. **Compute** first: per image, {parts}. The work is CPU-bound and linear in cores; an int8 "
        "model (see the deployment benchmarks) shrinks the model's part, after which decode and the "
        "per-row Spark/Python work set the pace, and larger source photos make decode the main cost.\n"
        f"2. **Storage reads**: each core consumes {per_core * avg_bytes / 1e6:.2f} MB/s, so every 1 GB/s of "
        f"read bandwidth feeds ~{cores_per_gbs:,.0f} cores; below that many cores compute dominates. The "
        f"features written are {FEATURE_BYTES / avg_bytes:.1f}x the bytes read (1280 float32 per image, "
        f"{TARGET_IMAGES * FEATURE_BYTES / 1e9:,.0f} GB for 10M before compression), the same order: "
        "plan write bandwidth like read bandwidth.\n"
        "3. **Listing and the driver**: a local folder is listed by the driver, one row per file "
        "(fine at 10^5, heavy at 10^7); for 10^7 files ingest once into a Parquet dataset (or read an "
        "`hdfs://`/`s3a://` URI, which Spark lists in parallel), so tasks read a few large files.\n"
        "4. **Shuffle / fit**: featurizing has none. Fitting a classifier on the features does: MLlib's "
        "logistic regression runs one Spark job per iteration (a tree aggregation of a 1280 x classes "
        "gradient), and caches the features as doubles: "
        f"{TARGET_IMAGES * 1280 * 8 / 1e9:,.0f} GB for 10M, i.e. cluster memory or disk, not cores, "
        "limits it; fit on a per-class sample (`fit --per-class N`) and predict on all.\n"
    )
    return text, figures


def run(quick: bool) -> Result:
    from sparkvision.models.onnx_export import registered_onnx

    cores = os.cpu_count() or 2
    repeat = 1 if quick else 2
    registered_onnx("efficientnet_lite0")  # exported once, before anything is timed
    folder, count = images(quick)
    files = list(folder.rglob("*.jpg"))
    avg_bytes = sum(f.stat().st_size for f in files) / len(files)
    # The engines compared head to head run twice, interleaved, and the ceiling first and last:
    # on a shared machine, load that comes and goes then favours none of them.
    order = ["ceiling", "ort1", "decode", "spark", "ray", "torch", "ray", "spark", "ceiling"]
    results: dict[str, dict] = {}
    attempts: dict[str, list[float]] = {}
    for name in order:
        # The eager loop is ~5x slower than the rest: one warm run is enough to see its rate.
        result = engine(name, folder, cores, 1 if name == "torch" else repeat)
        attempts.setdefault(name, []).append(result["steady_img_s"])
        if name not in results or result["steady_img_s"] > results[name]["steady_img_s"]:
            results[name] = result
    # The ceiling is the better of one session using every core and the 1-thread rate times the
    # cores (perfect scaling of independent sessions, which is what Spark's and Ray's workers run).
    threaded = results["ceiling"]["steady_img_s"]
    scaled = cores * results["ort1"]["steady_img_s"]
    ceiling = max(threaded, scaled)
    spark, ray = results["spark"], results["ray"]
    rows = [
        [f"ONNX Runtime alone, pre-decoded tensors (ceiling: max of 1 session x {cores} threads = "
         f"{threaded:.1f}, {cores} x the 1-thread rate = {scaled:.1f})", ceiling, 1.0, "-",
         results["ceiling"]["startup_s"]],
        [f"sparkvision on Spark local[{cores}]", spark["steady_img_s"], spark["steady_img_s"] / ceiling, 1.0,
         spark["startup_s"]],
        [f"Ray Data {ray.get('ray', '')}, map_batches, {cores} ONNX actors", ray["steady_img_s"],
         ray["steady_img_s"] / ceiling, ray["steady_img_s"] / spark["steady_img_s"], ray["startup_s"]],
        [f"plain PyTorch loop, eager, {cores} threads", results["torch"]["steady_img_s"],
         results["torch"]["steady_img_s"] / ceiling, results["torch"]["steady_img_s"] / spark["steady_img_s"],
         results["torch"]["startup_s"]],
    ]
    vs_ray = spark["steady_img_s"] / ray["steady_img_s"]
    vs_ceiling = spark["steady_img_s"] / ceiling
    cost_text, cost = cost_model(results, cores, avg_bytes)
    markdown = (
        f"{count:,} distinct 224 px JPEG photos (re-encoded variants of imagenette-mini: crops, flips, "
        f"quality 60-95; {avg_bytes / 1e3:.1f} KB on average), EfficientNet-Lite0 pooled features, "
        f"{cores} cores, each engine in a fresh process, steady state = best of {repeat} warm run(s) over "
        "all images.\n\n"
        + table(["engine", "steady images/s", "vs ceiling", "vs sparkvision", "startup s"], rows)
        + f"\n\nsparkvision steady state is **{vs_ray:.2f}x Ray Data** (target >= 1) and **{vs_ceiling:.2f} "
        f"of the ONNX Runtime ceiling** (target >= 0.85). Per core: decode alone "
        f"{results['decode']['steady_img_s']:.0f} images/s, the model alone on 1 thread "
        f"{results['ort1']['steady_img_s']:.0f} images/s. Every process ran twice, interleaved (ceiling "
        "first and last; sparkvision, Ray, Ray, sparkvision), and the better of the two is shown: "
        + "; ".join(f"{n} {', '.join(f'{v:.0f}' for v in vals)}" for n, vals in attempts.items() if len(vals) > 1)
        + " images/s. Startup = session or `ray.init` and model load, plus the first run's extra time over a "
        "warm one.\n\n"
        + cost_text
    )
    figures = {
        "images": count, "cores": cores, "avg_image_bytes": avg_bytes, "repeat": repeat,
        "engines": results, "attempts_img_s": attempts,
        "spark_vs_ray": vs_ray, "spark_vs_ceiling": vs_ceiling,
        "ceiling_img_s": {"one_session_all_threads": threaded, "cores_x_one_thread": scaled},
        "targets": {"spark_vs_ray": 1.0, "spark_vs_ceiling": 0.85}, "cost_model": cost,
    }
    return Result(markdown, figures)


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print(result.markdown)
