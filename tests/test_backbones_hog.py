"""Classic features: ``--backbone hog`` against scikit-image's HOG, its ONNX export, and ``fit --pca K`` (an
MLlib PCA stage in the saved pipeline) with HOG and with a CNN."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
import torch
from conftest import assert_usage_errors
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCAModel
from skimage.feature import hog as skimage_hog
from transfer_cases import photo_folder

from sparkvision.models import create_model, get_spec
from sparkvision.models.hog import CELL, HOG, LUMA, SIZE, feature_count
from sparkvision.models.model_dir import load_card
from sparkvision.models.onnx_export import registered_onnx
from sparkvision.models.runner import ClassifierRunner, from_registry
from sparkvision.preprocess import ImagePreprocessor


def _reference(grey: np.ndarray) -> np.ndarray:
    """scikit-image's HOG of one (H, W) image with the registered model's parameters."""
    return skimage_hog(grey, orientations=9, pixels_per_cell=(CELL, CELL), cells_per_block=(2, 2),
                       block_norm="L2-Hys", feature_vector=True)


def _photos(imagenette, step: int = 20) -> list[bytes]:
    return [f.read_bytes() for f in sorted((imagenette / "val").glob("*/*"))[::step]]


def test_hog_gives_scikit_images_features_of_real_photos(imagenette):
    batch = ImagePreprocessor(get_spec("hog").preprocess)(_photos(imagenette))
    assert batch.tensor.shape == (20, 1, SIZE, SIZE) and batch.tensor.max() <= 1.0
    with torch.no_grad():
        got = create_model("hog", pretrained=True)(torch.from_numpy(batch.tensor)).numpy()
    expected = np.stack([_reference(image[0]) for image in batch.tensor])
    assert got.shape == expected.shape == (20, feature_count()) == (20, 1764)
    # Measured: at most 6e-8 apart (float32 sums against scikit-image's float64); no vote lands in another bin.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert expected.std(axis=0).mean() > 0.02 and np.abs(got[0] - got[1]).max() > 0.1  # real, varied features


def test_hog_of_rgb_and_of_sizes_that_are_not_whole_cells(imagenette):
    """A 3-channel input is made grey with the luma weights; pixels past the last whole cell are left out."""
    rgb = ImagePreprocessor(get_spec("efficientnet_lite0").preprocess)(_photos(imagenette, 100)).tensor
    rgb = (rgb[:, :, :150, :201] + 1) / 2  # [-1, 1] -> [0, 1], 150x201: neither a multiple of 16
    with torch.no_grad():
        got = HOG(in_chans=3)(torch.from_numpy(rgb)).numpy()
    grey = np.einsum("nchw,c->nhw", rgb, np.asarray(LUMA, dtype=np.float32))
    expected = np.stack([_reference(image) for image in grey])
    assert got.shape == (len(rgb), feature_count((150, 201))) == (len(rgb), 8 * 11 * 36)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_the_hog_onnx_graph_gives_the_modules_features_and_only_features(imagenette):
    graph = onnx.load(str(registered_onnx("hog")))
    assert [o.name for o in graph.graph.output] == ["features"]  # no classifier: one output for both roles
    assert from_registry("hog").output_size("features") == 1764  # declared: fit sizes its stages from it
    batch = ImagePreprocessor(get_spec("hog").preprocess)(_photos(imagenette, 37))
    runner = ClassifierRunner.from_registry("hog", threads=1)
    got = runner.features(batch.tensor)
    with torch.no_grad():
        expected = create_model("hog").forward_features(torch.from_numpy(batch.tensor)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    spec = get_spec("hog")
    assert spec.num_classes == 0 and spec.labels is None and spec.num_features == 1764
    with pytest.raises(ValueError, match="no classifier"):
        create_model("hog", num_classes=10)


def test_fit_hog_with_pca_then_predict_and_serve(imagenette, tmp_path, cli):
    from sklearn.decomposition import PCA

    classes = ["church", "golf_ball", "parachute"]
    train = photo_folder(imagenette, "train", tmp_path / "train", classes, per_class=10)
    val = photo_folder(imagenette, "val", tmp_path / "val", classes, per_class=4)
    model = tmp_path / "model"
    code, printed = cli("fit", "--train", train, "--val", val, "--backbone", "hog", "--pca", "12", "--out", model)
    assert code == 0
    report = json.loads(printed)
    assert report["backbone"] == "hog" and report["pca"]["k"] == 12 and report["pca"]["input_features"] == 1764

    # The PCA is fitted on the training photos' HOG features: scikit-learn's PCA of them keeps the same variance.
    files = sorted(train.glob("*/*"))
    features = ClassifierRunner.from_registry("hog", threads=1).features(
        ImagePreprocessor(get_spec("hog").preprocess)([f.read_bytes() for f in files]).tensor)
    explained = PCA(12).fit(features.astype(np.float64)).explained_variance_ratio_.sum()
    assert report["pca"]["explained_variance"] == pytest.approx(explained, abs=2e-3)

    card = load_card(model)
    assert card.architecture == "hog (features) + PCA 12 + MLlib logreg" and card.provenance["pca"] == report["pca"]
    assert card.preprocess == get_spec("hog").preprocess and card.onnx  # the PCA folds into serve's graph
    stages = PipelineModel.load(str(model / card.spark_pipeline)).stages
    pca = [s for s in stages if isinstance(s, PCAModel)]
    assert len(pca) == 1 and pca[0].getK() == 12 and pca[0].pc.toArray().shape == (1764, 12)
    assert stages[-3].numFeatures == 12  # the classifier learns from the components

    code, printed = cli("predict", "--model", model, "--input", val, "--out", tmp_path / "predictions")
    assert code == 0 and json.loads(printed)["predicted"] == 12
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "predictions").to_pylist()}
    assert sum(r["prediction"] == r["label"] for r in rows.values()) >= 7  # measured 9 of 12; chance is 4
    # serve's model.onnx (HOG + PCA folded into the head) gives the probabilities Spark gave.
    paths = sorted(rows)
    served = ClassifierRunner.from_model_dir(model, threads=1).predict_proba(
        [open(p.removeprefix("file:"), "rb").read() for p in paths])
    np.testing.assert_allclose(served.values, [rows[p]["probability"] for p in paths], atol=1e-5)


def test_pca_with_a_cnn_backbone_and_an_mlp_head(imagenette, tmp_path, cli):
    classes = ["golf_ball", "parachute"]
    train = photo_folder(imagenette, "train", tmp_path / "train", classes, per_class=8)
    model = tmp_path / "model"
    code, printed = cli("fit", "--train", train, "--val-fraction", "0.25", "--pca", "6", "--classifier", "mlp",
                        "--out", model)
    assert code == 0
    report = json.loads(printed)
    assert report["pca"]["k"] == 6 and report["pca"]["input_features"] == 1280
    assert report["classifier_params"]["layers"][0] == 6 and report["validation"]["accuracy"] >= 0.75
    card = load_card(model)
    assert card.architecture == "efficientnet_lite0 (features) + PCA 6 + MLlib mlp"
    assert card.provenance["onnx_export"]["layers"][0] == [256, 1280]  # the PCA folded into the first layer
    photos = photo_folder(imagenette, "val", tmp_path / "new", classes, per_class=2)
    code, printed = cli("predict", "--model", model, "--input", photos, "--out", tmp_path / "predictions")
    assert code == 0
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "predictions").to_pylist()}
    paths = sorted(rows)
    served = ClassifierRunner.from_model_dir(model, threads=1).predict_proba(
        [open(p.removeprefix("file:"), "rb").read() for p in paths])
    np.testing.assert_allclose(served.values, [rows[p]["probability"] for p in paths], atol=1e-5)


def test_a_bad_pca_is_a_usage_error_before_spark_starts(tmp_path, caplog):
    fit = ["fit", "--train", tmp_path, "--out", tmp_path / "m"]
    cases = [
        ([*fit, "--pca", "0"], "pca (--pca K) must be a positive number of components, got 0"),
        ([*fit, "--pca", "-3", "--backbone", "hog"], "must be a positive number"),
        ([*fit, "--pca", "1765", "--backbone", "hog"], "must be at most the 1764 features of hog, got 1765"),
        ([*fit, "--pca", "1281"], "must be at most the 1280 features of efficientnet_lite0"),
        ([*fit, "--pca", "1001", "--output", "logits"], "must be at most the 1000 logits of efficientnet_lite0"),
        (["train", "--train", tmp_path, "--out", tmp_path / "m", "--backbone", "hog"], "nothing to train"),
        (["classify", "--input", tmp_path, "--backbone", "hog"], "hog names no classes"),
    ]
    assert_usage_errors(caplog, cases)


def test_a_pca_and_a_scaler_fold_into_the_exported_head_in_pipeline_order(spark, imagenette):
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector, vector_to_array

    from sparkvision.deploy.export import fold_stages, head_from_spark

    classes = ["church", "golf_ball", "tench"]
    files = [f for c in classes for f in sorted((imagenette / "train" / c).iterdir())[:8]]
    x = ClassifierRunner.from_registry("hog", threads=1).features(
        ImagePreprocessor(get_spec("hog").preprocess)([f.read_bytes() for f in files]).tensor)[:, :64]
    frame = spark.createDataFrame([(x[i].tolist(), float(classes.index(f.parent.name))) for i, f in enumerate(files)],
                                  ["x", "label"]).select(array_to_vector("x").alias("features"), "label")
    fitted = Pipeline(stages=[
        PCA(k=5, inputCol="features", outputCol="pca"),
        StandardScaler(inputCol="pca", outputCol="scaled", withMean=True, withStd=True),
        LogisticRegression(featuresCol="scaled", regParam=0.01, maxIter=100),
    ]).fit(frame)
    pca, scaler, lr = fitted.stages
    head = fold_stages(head_from_spark(lr), [pca, scaler])
    assert head.num_features == 64  # the head now takes the features themselves
    scores = head(x.astype(np.float64))
    got = np.exp(scores - scores.max(1, keepdims=True))
    got /= got.sum(1, keepdims=True)
    want = np.asarray([r["p"] for r in fitted.transform(frame).select(vector_to_array("probability").alias("p"))
                       .collect()])
    np.testing.assert_allclose(got, want, atol=1e-6)
