"""Built-in datasets: counts and labels, and full Fashion-MNIST through Parquet with identical pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sparkvision.io import load_images, read_dataset, write_dataset
from sparkvision.io.builtin import FASHION_MNIST_CLASSES, builtin_frame, load_arrays, read_idx
from sparkvision.io.dataset import read_manifest


@pytest.mark.parametrize(
    ("name", "shapes", "per_class"),
    [
        ("fashion-mnist", [(60000, 28, 28), (10000, 28, 28)], 7000),
        ("fashion-mnist:train", [(60000, 28, 28)], 6000),
        ("fashion-mnist:test", [(10000, 28, 28)], 1000),
        ("mnist-5k", [(5000, 28, 28)], 500),
    ],
)
def test_builtin_arrays_have_the_published_counts(name, shapes, per_class):
    parts = load_arrays(name)
    assert [p.images.shape for p in parts] == shapes
    labels = np.concatenate([p.labels for p in parts])
    assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
    assert all(p.images.dtype == np.uint8 for p in parts)


def test_digits_frame_rows_and_labels():
    frame = builtin_frame("digits")
    assert len(frame) == 1797
    assert sorted(frame["label"].unique()) == [str(d) for d in range(10)]
    assert frame["label"].value_counts().min() >= 174
    from sklearn.datasets import load_digits

    first = np.asarray(Image.open(io.BytesIO(frame["content"][0])))
    assert first.shape == (8, 8)
    assert np.array_equal(first, np.rint(load_digits().images[0] * 255 / 16))  # 0-16 scaled to 0-255
    assert (frame["width"] == 8).all() and frame["error"].isna().all()


def test_unknown_builtin_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="fashion-mnist"):
        load_arrays("cifar-10")


def test_idx_reader_checks_the_header(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")  # float type code, not unsigned bytes
    with pytest.raises(ValueError, match="unsigned-byte IDX"):
        read_idx(str(bad))
    short = tmp_path / "short.idx"
    short.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(ValueError, match="header says"):
        read_idx(str(short))


@pytest.mark.slow
def test_full_fashion_mnist_round_trips_through_parquet_with_identical_pixels(spark, tmp_path):
    out = str(tmp_path / "fashion")
    manifest = write_dataset(spark, load_images(spark, "fashion-mnist"), out, source="fashion-mnist")
    assert (manifest.rows, manifest.ok, manifest.errors) == (70000, 70000, 0)
    assert manifest.classes == sorted(FASHION_MNIST_CLASSES)
    assert read_manifest(spark, out).rows == 70000
    assert len(list((tmp_path / "fashion").glob("*.parquet"))) >= 2  # written in parallel parts

    back = read_dataset(spark, out).select("path", "label", "content", "width", "height", "error").toPandas()
    assert len(back) == 70000 and back["path"].is_unique and back["error"].isna().all()
    assert (back["width"] == 28).all() and (back["height"] == 28).all()
    train, test = load_arrays("fashion-mnist")
    expected = np.concatenate([train.images, test.images])
    expected_labels = np.concatenate([train.labels, test.labels])
    part, index = back["path"].str.extract(r"fashion-mnist/(train|test)/(\d+)\.png$").T.to_numpy()
    position = index.astype(int) + np.where(part == "test", 60000, 0)
    assert sorted(position.tolist()) == list(range(70000))
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(data))) for data in back["content"]])
    assert np.array_equal(pixels, expected[position])
    assert back["label"].tolist() == [FASHION_MNIST_CLASSES[k] for k in expected_labels[position]]
