"""Spark's own ``image`` source as input: its struct pixels go through the one preprocessing path and
give exactly the tensors, features, predictions and boxes of the files they came from; a struct that
is broken (a mode other than 8-bit, data of the wrong length, a file Spark could not decode) is an
error on its row, and every other row still comes out."""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image
from pyspark.sql import functions as F

from sparkvision.config import DecodeSettings, PreprocessConfig
from sparkvision.io.decode import OcvImage, decode_image, ocv_to_image
from sparkvision.io.errors import ErrorKind, ImageError, error_kind
from sparkvision.models import get_spec
from sparkvision.preprocess import ImagePreprocessor

#: OpenCV type codes (pyspark.ml.image.ImageSchema.ocvTypes); CV_32FC3 is one Spark's source never writes.
CV_8UC1, CV_8UC3, CV_8UC4, CV_32FC3 = 0, 16, 24, 21


def _local(origin: str) -> Path:
    return Path(unquote(urlparse(origin).path))


def _ocv(row) -> OcvImage:
    return OcvImage(row.height, row.width, row.nChannels, row.mode, bytes(row.data))


@pytest.fixture(scope="module")
def photos(imagenette, tmp_path_factory) -> list[Path]:
    """Real photos of every imagenette class (two grey JPEGs among them) and PNGs of every mode
    that Spark's source turns into another: grey, RGBA with graded alpha, RGB, palette."""
    jpegs = sorted((imagenette / "val").glob("*/*"))[::25]
    greys = [f for f in sorted(imagenette.glob("*/*/*")) if Image.open(f).mode == "L"][:2]
    assert len(greys) == 2, "imagenette-mini holds grey JPEGs"
    folder = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(17)
    photo = np.asarray(Image.open(jpegs[0]).convert("RGB"))[:120, :160]
    alpha = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))[..., None]
    made = {
        "grey.png": Image.fromarray(photo[..., 1]),
        "rgba.png": Image.fromarray(np.concatenate([photo, alpha], axis=2)),
        "rgb.png": Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)),
        "palette.png": Image.fromarray(photo).quantize(64),
    }
    for name, img in made.items():
        img.save(folder / name)
    assert {Image.open(folder / n).mode for n in made} == {"L", "RGBA", "RGB", "P"}
    return [*jpegs, *greys, *(folder / n for n in made)]


@pytest.fixture(scope="module")
def structs(spark, photos) -> dict[Path, OcvImage]:
    rows = spark.read.format("image").load([str(p) for p in photos]).collect()
    assert len(rows) == len(photos)
    return {_local(r.image.origin): _ocv(r.image) for r in rows}


def test_ocv_to_image_turns_bgr_bgra_and_grey_into_rgb_rgba_and_l():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    bgra = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    grey = rng.integers(0, 256, (5, 7, 1), dtype=np.uint8)
    img = ocv_to_image(5, 7, 3, CV_8UC3, bgr.tobytes())
    assert img.mode == "RGB" and img.size == (7, 5) and np.array_equal(np.asarray(img), bgr[..., ::-1])
    img = ocv_to_image(5, 7, 4, CV_8UC4, bgra.tobytes())
    assert img.mode == "RGBA" and np.array_equal(np.asarray(img), bgra[..., [2, 1, 0, 3]])
    img = decode_image(OcvImage(5, 7, 1, CV_8UC1, grey.tobytes()))  # where encoded bytes go, pixels go too
    assert img.mode == "L" and np.array_equal(np.asarray(img), grey[..., 0])


@pytest.mark.parametrize(("fields", "kind", "words"), [
    ((5, 7, 3, CV_32FC3, bytes(5 * 7 * 12)), ErrorKind.UNSUPPORTED, "OpenCV type 21"),
    ((5, 7, 3, CV_8UC3, bytes(5 * 7 * 3 - 1)), ErrorKind.TRUNCATED, "104 bytes of data, but 7x5x3 needs 105"),
    ((5, 7, 3, CV_8UC3, bytes(5 * 7 * 3 + 7)), ErrorKind.CORRUPT, "needs 105"),
    ((5, 7, 4, CV_8UC3, bytes(5 * 7 * 4)), ErrorKind.CORRUPT, "nChannels is 4 but type 16 (CV_8UC3) has 3"),
    ((-1, -1, -1, -1, b""), ErrorKind.CORRUPT, "Spark's image source could not decode"),
    ((0, 7, 1, CV_8UC1, b""), ErrorKind.CORRUPT, "invalid dimensions 7x0"),
    ((5, None, 1, CV_8UC1, bytes(35)), ErrorKind.CORRUPT, "has no width"),
    ((5, 7, 1, CV_8UC1, None), ErrorKind.UNREADABLE, "no data"),
])
def test_a_struct_that_does_not_hold_its_pixels_is_a_clear_error(fields, kind, words):
    with pytest.raises(ImageError) as caught:
        ocv_to_image(*fields)
    assert caught.value.kind == kind and words in caught.value.message, caught.value.message
    # The preprocessing path reports it as a row error, like a corrupt file.
    batch = ImagePreprocessor(PreprocessConfig(size=(8, 8)))([OcvImage(*fields), OcvImage(2, 2, 1, CV_8UC1, bytes(4))])
    assert list(batch.index) == [1] and error_kind(batch.errors[0]) == kind


def test_the_pixel_limit_applies_to_structs_as_to_files():
    with pytest.raises(ImageError) as caught:
        ocv_to_image(100, 100, 1, CV_8UC1, bytes(10_000), DecodeSettings(max_pixels=9_999))
    assert caught.value.kind == ErrorKind.TOO_MANY_PIXELS


@pytest.mark.parametrize("config", [
    get_spec("efficientnet_lite0").preprocess,
    PreprocessConfig.preset("imagenet", size=(160, 128), resize_mode="center_crop", interpolation="bicubic"),
    PreprocessConfig.preset("unit", size=(96, 96), channels=1, resize_mode="letterbox"),
], ids=["lite0", "center_crop", "grey_letterbox"])
def test_struct_tensors_equal_the_files_tensors_pixel_for_pixel(structs, config):
    # Java ImageIO's JPEG decoder gave exactly libjpeg-turbo's (Pillow's) full-size pixels on all
    # 1,200 imagenette-mini photos, so JPEGs are compared exactly too. The file path is read without
    # JPEG draft (a reduced-DCT decode for images far above the model's size; structs are full size).
    files = list(structs)
    from_files = ImagePreprocessor(config, DecodeSettings(jpeg_draft=False))([f.read_bytes() for f in files])
    from_structs = ImagePreprocessor(config)([structs[f] for f in files])
    assert from_files.errors == from_structs.errors == [None] * len(files)
    assert np.array_equal(from_structs.tensor, from_files.tensor)
    assert np.array_equal(from_structs.sizes, from_files.sizes)


def test_spark_chooses_the_ocv_mode_by_the_files_colours(structs):
    modes = {f.name: s.mode for f, s in structs.items()}
    assert modes["grey.png"] == CV_8UC1 and modes["rgba.png"] == CV_8UC4
    assert modes["rgb.png"] == modes["palette.png"] == CV_8UC3
    assert sum(m == CV_8UC1 for m in modes.values()) == 3  # the PNG and the two grey JPEGs
    for f, s in structs.items():  # the raw pixels, before any preprocessing, are Pillow's
        want = decode_image(f.read_bytes(), DecodeSettings(jpeg_draft=False))
        want = want.convert({CV_8UC1: "L", CV_8UC3: "RGB", CV_8UC4: "RGBA"}[s.mode])
        assert np.array_equal(np.asarray(ocv_to_image(*s)), np.asarray(want)), f.name


# ---------------------------------------------------------------- the Spark stages


@pytest.fixture(scope="module")
def image_frame(spark, photos, tmp_path_factory):
    """``spark.read.format("image")`` of the photos and a file it cannot decode, plus hand-made broken
    structs: a float type, truncated data, and a null image."""
    bad = tmp_path_factory.mktemp("bad") / "not_an_image.png"
    bad.write_bytes(b"this is text, not a PNG" * 10)
    read = spark.read.format("image").load([str(p) for p in [*photos, bad]])
    schema = read.schema
    good = read.where(F.col("image.nChannels") == 3).first().image
    broken = [
        (("file:/broken/float.png", 4, 4, 3, CV_32FC3, bytes(4 * 4 * 12)),),
        (("file:/broken/truncated.png", good.height, good.width, 3, CV_8UC3, bytes(good.data)[:-100]),),
        (None,),
    ]
    return read.unionByName(spark.createDataFrame(broken, schema)).repartition(3), bad


BROKEN = {"not_an_image.png": "corrupt", "float.png": "unsupported", "truncated.png": "truncated"}


def _binary_frame(spark, photos):
    from sparkvision.io.schema import IMAGE_SCHEMA

    rows = [(f"file://{p}", None, p.read_bytes(), None, None, None, None, None, None) for p in photos]
    return spark.createDataFrame(rows, IMAGE_SCHEMA).repartition(2)


def test_featurizer_on_the_struct_column_gives_the_features_of_the_files(spark, photos, image_frame):
    from sparkvision.ml.featurizer import ImageFeaturizer

    frame, _ = image_frame
    featurizer = ImageFeaturizer(inputCol="image", batchSize=4)
    rows = featurizer.transform(frame).select("image.origin", "features", "error").collect()
    assert len(rows) == frame.count() == len(photos) + 4 and featurizer.rows_processed == len(rows)
    errors = {(Path(r.origin).name if r.origin else None): r.error for r in rows if r.error}
    assert {n: error_kind(e) for n, e in errors.items() if n} == BROKEN
    assert error_kind(errors[None]) == "unreadable"  # the null image
    assert all((r.features is None) == (r.error is not None) for r in rows)

    # The same photos as encoded bytes. imagenette-mini's photos are too small for a JPEG draft
    # decode at 224 px, so the file path decodes them at full size too.
    want = {_local(r.path): r.features.toArray() for r in
            ImageFeaturizer(batchSize=4).transform(_binary_frame(spark, photos)).collect()}
    got = {_local(r.origin): r.features.toArray() for r in rows if r.error is None}
    assert set(got) == set(want) == set(photos)
    for path, vector in got.items():
        np.testing.assert_allclose(vector, want[path], rtol=1e-4, atol=1e-5, err_msg=str(path))


def test_fitted_pipeline_predict_and_load_images_take_the_image_source(
        spark, photos, image_frame, fitted_imagenette, tmp_path):
    from sparkvision.inference.predict import load_model, predict
    from sparkvision.io import IMAGE_SCHEMA, load_images

    frame, _ = image_frame
    model_dir = fitted_imagenette["model_dir"]
    want = {_local(r.path): r for r in load_model(model_dir).predictions(_binary_frame(spark, photos)).collect()}

    # predict() on the frame Spark read: path from each image's origin, every row once, broken rows with errors.
    summary = predict(spark, model_dir, frame.where(F.col("image").isNotNull()), str(tmp_path / "p"))
    rows = spark.read.parquet(str(tmp_path / "p")).collect()
    assert summary.rows == len(rows) == len(photos) + 3 and summary.errors == 3
    assert {Path(r.path).name: error_kind(r.error) for r in rows if r.error} == BROKEN
    for r in rows:
        if r.error is None:
            assert r.prediction == want[_local(r.path)].prediction
            np.testing.assert_allclose(r.probability, want[_local(r.path)].probability, rtol=1e-4, atol=1e-6)

    # load_images(spark, frame): IMAGE_SCHEMA rows, the label column kept, pixels as lossless PNG.
    labelled = frame.withColumn("label", F.element_at(F.split("image.origin", "/"), -2))
    loaded = load_images(spark, labelled)
    assert loaded.schema == IMAGE_SCHEMA
    images = loaded.collect()
    assert len(images) == len(photos) + 4
    assert sum(r.path.startswith("image-source:") for r in images) == 1  # the null image has no origin
    by_path = {_local(r.path): r for r in images if r.error is None}
    assert set(by_path) == set(photos)
    for path, r in by_path.items():
        assert r.label == path.parent.name and r.format == "PNG" and r.content.startswith(b"\x89PNG")
        png = np.asarray(Image.open(io.BytesIO(r.content)))
        assert png.shape[:2] == (r.height, r.width) and r.mode == Image.open(io.BytesIO(r.content)).mode
    assert {Path(r.path).name: error_kind(r.error) for r in images if r.error and r.path.startswith("file:")} == BROKEN
    again = {_local(r.path): r for r in load_model(model_dir).predictions(loaded).collect() if r.error is None}
    assert set(again) == set(photos)
    for path, r in again.items():
        assert r.prediction == want[path].prediction
        np.testing.assert_allclose(r.probability, want[path].probability, rtol=1e-4, atol=1e-6)


def test_detector_on_the_struct_column_finds_the_boxes_of_the_files(spark, tmp_path):
    from detection_helpers import SCENES, detector_model_dir, scene_png

    from sparkvision.io.schema import IMAGE_SCHEMA
    from sparkvision.ml.detector import ObjectDetector

    files = []
    for i in range(len(SCENES)):
        files.append(tmp_path / f"scene{i}.png")
        files[-1].write_bytes(scene_png(i))
    model = str(detector_model_dir())
    structs = ObjectDetector(modelDir=model, inputCol="image").transform(
        spark.read.format("image").load([str(f) for f in files])).collect()
    rows = [(f"file://{f}", None, f.read_bytes(), None, None, None, None, None, None) for f in files]
    binary = ObjectDetector(modelDir=model).transform(spark.createDataFrame(rows, IMAGE_SCHEMA)).collect()
    want = {_local(r.path): r.boxes for r in binary}
    assert len(structs) == len(files) and all(r.error is None and r.boxes for r in structs)
    for r in structs:
        got = want[_local(r.image.origin)]
        assert [b.label for b in r.boxes] == [b.label for b in got]
        for a, b in zip(r.boxes, got, strict=True):
            np.testing.assert_allclose([a.score, a.xmin, a.ymin, a.xmax, a.ymax],
                                       [b.score, b.xmin, b.ymin, b.xmax, b.ymax], atol=1e-4)


def test_a_column_that_is_neither_bytes_nor_an_image_struct_is_refused(spark):
    from sparkvision.ml.featurizer import ImageFeaturizer

    frame = spark.createDataFrame([("a", 1)], "path string, content int")
    with pytest.raises(ValueError, match="encoded image bytes .binary. or Spark's image struct"):
        ImageFeaturizer().transform(frame)
