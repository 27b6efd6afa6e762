"""One featurization engine per process, for ``bench_peers``: same model, same images, same cores.

    python benchmarks/peer_engines.py ENGINE --folder DIR [--cores 2] [--repeat 2]

prints one JSON object: ``setup_s`` (session/cluster/model start), ``runs_s`` (the first
run, then ``repeat`` warm runs over every image) and what was processed. Each engine
starts in a fresh interpreter, so none inherits another's warm caches, threads or memory.

Engines (EfficientNet-Lite0 pooled 1280-d features, sparkvision's own preprocessing
everywhere: decode, RGB, resize to 224, (x/255 - 0.5)/0.5):

* ``ceiling``: ONNX Runtime alone on tensors decoded beforehand, ``cores`` intra-op threads.
* ``ort1``: the same with 1 thread (the model's cost per core, for the cost model).
* ``decode``: decode + resize + normalise alone, 1 thread (the decode cost per core).
* ``torch``: a plain PyTorch loop: read, decode, eager model, ``cores`` threads.
* ``spark``: sparkvision: ``load_images`` + ``ImageFeaturizer`` on Spark ``local[cores]``
  (one task per core, 1 ONNX thread each), written to Spark's ``noop`` sink.
* ``ray``: Ray Data: ``read_binary_files`` + ``map_batches`` with an actor pool of
  ``cores`` actors running the same ONNX graph (1 thread each) on the same batches.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

MODEL = "efficientnet_lite0"
#: The ceiling runs on this many decoded images at most (600 KB of float32 each): a rate needs no more.
CEILING_IMAGES = 1000
ROOT = Path(__file__).resolve().parents[1]


def _files(folder: str) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*.jpg")) + sorted(p for p in Path(folder).rglob("*.JPEG"))


def _batch_size() -> int:
    from sparkvision.config import FeaturizeSettings

    return FeaturizeSettings.batch_size


def _preprocessor():
    from sparkvision.models import get_spec
    from sparkvision.preprocess import ImagePreprocessor

    return ImagePreprocessor(get_spec(MODEL).preprocess)


def ort(folder: str, cores: int, repeat: int) -> dict:
    from sparkvision.models.onnx_export import registered_onnx
    from sparkvision.models.runtime import OnnxModel

    files = _files(folder)[:CEILING_IMAGES]
    started = time.perf_counter()
    tensors = _preprocessor()([f.read_bytes() for f in files]).tensor  # not timed: the ceiling has no decode
    decode_s = time.perf_counter() - started
    started = time.perf_counter()
    model = OnnxModel(registered_onnx(MODEL), threads=cores)
    model.run(tensors[:_batch_size()], ["features"])
    setup = time.perf_counter() - started
    runs = []
    for _ in range(1 + repeat):
        started = time.perf_counter()
        features = model.run_batched(tensors, "features", _batch_size())
        runs.append(time.perf_counter() - started)
    return {"images": len(tensors), "setup_s": setup, "runs_s": runs, "features": int(features.shape[1]),
            "predecode_s": decode_s}


def decode(folder: str, cores: int, repeat: int) -> dict:
    files = _files(folder)
    contents = [f.read_bytes() for f in files]
    prep = _preprocessor()
    runs = []
    batch = _batch_size()
    for _ in range(1 + repeat):
        started = time.perf_counter()
        for i in range(0, len(contents), batch):
            prep(contents[i:i + batch])
        runs.append(time.perf_counter() - started)
    return {"images": len(files), "setup_s": 0.0, "runs_s": runs}


def torch_loop(folder: str, cores: int, repeat: int) -> dict:
    import torch

    from sparkvision.models import create_model

    torch.set_num_threads(cores)
    started = time.perf_counter()
    model = create_model(MODEL, pretrained=True).eval()
    prep = _preprocessor()
    setup = time.perf_counter() - started
    files = _files(folder)
    batch = _batch_size()
    runs = []
    for _ in range(1 + repeat):
        started = time.perf_counter()
        done = 0
        with torch.inference_mode():
            for i in range(0, len(files), batch):
                tensor = prep([f.read_bytes() for f in files[i:i + batch]]).tensor
                done += int(model.forward_features(torch.from_numpy(tensor)).shape[0])
        runs.append(time.perf_counter() - started)
    return {"images": done, "setup_s": setup, "runs_s": runs, "threads": torch.get_num_threads()}


def spark(folder: str, cores: int, repeat: int) -> dict:
    from sparkvision.config import SparkSettings
    from sparkvision.io import load_images
    from sparkvision.ml.featurizer import ImageFeaturizer
    from sparkvision.session import get_spark

    started = time.perf_counter()
    session = get_spark(SparkSettings(master=f"local[{cores}]", driver_memory="2g", app_name="bench-peers"))
    setup = time.perf_counter() - started
    featurizer = ImageFeaturizer()
    runs = []
    try:
        for _ in range(1 + repeat):
            started = time.perf_counter()
            frame = load_images(session, folder, probe="header")
            featurizer.transform(frame).select("path", "features").write.format("noop").mode("overwrite").save()
            runs.append(time.perf_counter() - started)
        images = featurizer.rows_processed // (1 + repeat)
    finally:
        session.stop()
    return {"images": images, "setup_s": setup, "runs_s": runs}


class _RayFeaturizer:
    """A Ray actor: one ONNX Runtime session (1 thread), sparkvision's preprocessing, same inner batches."""

    def __init__(self, model_bytes: bytes) -> None:
        from sparkvision.models.runtime import OnnxModel

        self.model = OnnxModel(model_bytes, threads=1)
        self.prep = _preprocessor()
        self.batch = _batch_size()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        contents = list(batch["bytes"])
        out = []
        for i in range(0, len(contents), self.batch):
            pre = self.prep(contents[i:i + self.batch])
            out.append(self.model.run(pre.tensor, ["features"])[0])
        return {"path": batch["path"], "features": np.concatenate(out)}


def ray_data(folder: str, cores: int, repeat: int) -> dict:
    import ray

    from sparkvision.models.onnx_export import registered_onnx

    model_bytes = Path(registered_onnx(MODEL)).read_bytes()
    paths = [str(f) for f in _files(folder)]  # the image files, as Spark's listing keeps them
    started = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"SPARKVISION_CACHE": os.environ.get("SPARKVISION_CACHE", "")}})
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    setup = time.perf_counter() - started
    runs, first_batch = [], []
    try:
        for _ in range(1 + repeat):
            started = time.perf_counter()
            ds = ray.data.read_binary_files(paths, include_paths=True).map_batches(
                _RayFeaturizer, fn_constructor_args=(model_bytes,), batch_size=256, batch_format="numpy",
                # 2 CPUs: actors asking 1 CPU each would leave none for the read tasks (the job hangs)
                concurrency=cores, num_cpus=0.5,
            )
            done, first = 0, None
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                done += len(batch["path"])
                first = first if first is not None else time.perf_counter() - started
            runs.append(time.perf_counter() - started)
            first_batch.append(first)
    finally:
        ray.shutdown()
    return {"images": done, "setup_s": setup, "runs_s": runs, "first_batch_s": first_batch,
            "ray": ray.__version__}


ENGINES = {"ceiling": ort, "ort1": ort, "decode": decode, "torch": torch_loop, "spark": spark, "ray": ray_data}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", choices=sorted(ENGINES))
    parser.add_argument("--folder", required=True)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeat", type=int, default=2, help="warm runs after the first")
    args = parser.parse_args(argv)
    os.environ.setdefault("SPARKVISION_CACHE", str(ROOT / ".cache" / "sparkvision"))
    cores = 1 if args.engine in ("ort1", "decode") else args.cores
    result = ENGINES[args.engine](args.folder, cores, args.repeat)
    result.update(engine=args.engine, cores=cores,
                  peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
