"""What the deployment tests share: model directories built from real weights and photos, and the
serving metrics (the server itself: :func:`sparkvision.testing.server.live_server`).

Everything is built once per test process (``functools.cache``) and reused across files.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = Path(os.environ.get("SPARKVISION_SHARED_DATA", ROOT.parent / "shared" / "data")) / "imagenette-mini"
BACKBONE = "efficientnet_lite0"


def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="sv-deploy-tests-"))


def photos(split: str, per_class: int) -> list[tuple[Path, str]]:
    """The first ``per_class`` photos (sorted by name) of every class of an imagenette split."""
    out = []
    for folder in sorted((IMAGENETTE / split).iterdir()):
        out += [(path, folder.name) for path in sorted(folder.iterdir())[:per_class]]
    return out


@functools.cache
def imagenet_model_dir() -> Path:
    """An ``onnx`` model directory of the registered ImageNet backbone."""
    from sparkvision.deploy.export import export_registered

    return export_registered(BACKBONE, _workdir() / "imagenet")


@functools.cache
def tensors(split: str, per_class: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """Preprocessed photos (through the model's own preprocessing) and their class names."""
    from sparkvision.models import get_spec
    from sparkvision.preprocess import ImagePreprocessor

    chosen = photos(split, per_class)
    batch = ImagePreprocessor(get_spec(BACKBONE).preprocess)([p.read_bytes() for p, _ in chosen])
    assert len(batch.index) == len(chosen)
    return batch.tensor, tuple(label for _, label in chosen)


@functools.cache
def features(split: str, per_class: int, output: str = "features") -> np.ndarray:
    from sparkvision.models.onnx_export import registered_onnx
    from sparkvision.models.runtime import OnnxModel

    model = OnnxModel(registered_onnx(BACKBONE), threads=os.cpu_count() or 1)
    return model.run_batched(tensors(split, per_class)[0], output, 32)


def feature_frame(spark, split: str, per_class: int, classes: list[str]):
    """(features, label index) rows for MLlib."""
    from pyspark.ml.linalg import Vectors

    labels = tensors(split, per_class)[1]
    rows = [(Vectors.dense(v.astype(float)), float(classes.index(lab)))
            for v, lab in zip(features(split, per_class), labels, strict=True)]
    return spark.createDataFrame(rows, ["features", "label"])


def classes() -> list[str]:
    return sorted(p.name for p in (IMAGENETTE / "train").iterdir())


@functools.cache
def imagenette_head_dir(spark) -> Path:
    """efficientnet_lite0 features + an MLlib logistic regression fitted on 20 photos per class."""
    from pyspark.ml.classification import LogisticRegression

    from sparkvision.deploy.export import head_from_spark, write_head_model_dir

    names = classes()
    lr = LogisticRegression(family="multinomial", regParam=0.01, maxIter=100)
    model = lr.fit(feature_frame(spark, "train", 20, names))
    return write_head_model_dir(_workdir() / "imagenette", BACKBONE, "features", head_from_spark(model), names,
                                name="imagenette-logreg")


def link_photos(root: Path, split: str, per_class: int) -> Path:
    """``root/split/<class>/`` links to the first ``per_class`` photos of each class (never copies)."""
    for folder in sorted((IMAGENETTE / split).iterdir()):
        target = root / split / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for photo in sorted(folder.iterdir())[:per_class]:
            if not (target / photo.name).exists():
                (target / photo.name).symlink_to(photo)
    return root / split


def as_older_fit(model_dir: Path, dst: Path) -> Path:
    """A copy of a fit model directory as ``sparkvision fit`` wrote it before it exported ONNX."""
    import shutil

    from sparkvision.deploy.export import HEAD_FILE
    from sparkvision.models.model_dir import load_card, save_card

    shutil.copytree(model_dir, dst)
    (dst / "model.onnx").unlink()
    (dst / HEAD_FILE).unlink()
    card = load_card(dst)
    card.onnx = None
    card.provenance = {k: v for k, v in card.provenance.items() if k != "onnx_export"}
    save_card(dst, card)
    return dst


# ---------------------------------------------------------------- a live server


def batch_histogram(url: str) -> tuple[float, float]:
    """The server's ``sparkvision_batch_size`` histogram from ``/metrics``: (model calls, images)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        if family.name == "sparkvision_batch_size":
            values = {s.name: s.value for s in family.samples}
            return values["sparkvision_batch_size_count"], values["sparkvision_batch_size_sum"]
    raise AssertionError("no batch size histogram in /metrics")
