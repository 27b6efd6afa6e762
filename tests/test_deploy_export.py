"""Fitted Spark pipelines as one ONNX graph: the same predictions as Spark, without Spark."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from deploy_helpers import BACKBONE, classes, feature_frame, features, tensors

from sparkvision.deploy.export import (
    append_head,
    export_pipeline,
    fold_scaler,
    head_from_spark,
    verify_export,
)
from sparkvision.models.onnx_export import registered_onnx
from sparkvision.models.runtime import OnnxModel


def _link_subset(root, split: str, per_class: int, imagenette) -> str:
    """A folder of symlinks to the first photos of each class (the photos are not copied)."""
    for folder in sorted((imagenette / split).iterdir()):
        target = root / split / folder.name
        target.mkdir(parents=True)
        for photo in sorted(folder.iterdir())[:per_class]:
            (target / photo.name).symlink_to(photo)
    return str(root / split)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_fitted_transfer_pipeline_exports_to_one_graph_predicting_like_spark(spark, imagenette, tmp_path):
    from sparkvision.config import TransferSettings
    from sparkvision.deploy.serve import ServedModel
    from sparkvision.io import load_images
    from sparkvision.ml.classifier import fit_transfer
    from sparkvision.models.model_dir import load_card

    train = _link_subset(tmp_path, "train", 6, imagenette)
    val = _link_subset(tmp_path, "val", 3, imagenette)
    model = fit_transfer(load_images(spark, train, probe="header"),
                         settings=TransferSettings(logreg_max_iter=30))
    model_dir = model.save(str(tmp_path / "model"))

    path = export_pipeline(spark, model_dir)
    card = load_card(model_dir)
    assert card.onnx == "model.onnx" and card.kind == "spark_pipeline"
    assert card.provenance["onnx_export"]["classifier"] == "logistic_regression"
    graph = onnx.load(str(path))
    assert [o.name for o in graph.graph.output] == ["features", "logits"]
    assert graph.graph.output[1].type.tensor_type.shape.dim[1].dim_value == len(card.labels) == 10

    # Every val photo: the Spark pipeline and the ONNX graph agree on the class, and on the probabilities.
    check = verify_export(spark, model_dir, val, limit=100)
    assert check["images"] == 30
    assert check["prediction_agreement"] == 1.0
    assert check["max_probability_difference"] < 1e-4
    # The exported model directory is servable as it is.
    served = ServedModel(model_dir, threads=1)
    first = next(p for p in sorted((tmp_path / "val" / "tench").iterdir()))
    probs = served.infer(served.preprocess(first.read_bytes()))
    assert probs.shape == (1, 10) and abs(probs.sum() - 1) < 1e-6


def test_mlp_head_graph_matches_spark_probabilities(spark):
    from pyspark.ml.classification import MultilayerPerceptronClassifier
    from pyspark.ml.functions import vector_to_array

    names = classes()
    mlp = MultilayerPerceptronClassifier(layers=[1280, 12, 10], maxIter=40, seed=3).fit(
        feature_frame(spark, "train", 10, names))
    head = head_from_spark(mlp)
    assert [layer.weight.shape for layer in head.layers] == [(12, 1280), (10, 12)]

    graph = append_head(registered_onnx(BACKBONE).read_bytes(), "features", head)
    got = _softmax(OnnxModel(graph.SerializeToString(), threads=os.cpu_count() or 1)
                   .run(tensors("val", 2)[0], ["logits"])[0].astype(np.float64))
    rows = mlp.transform(feature_frame(spark, "val", 2, names)).select(
        vector_to_array("probability").alias("p")).collect()
    want = np.asarray([r["p"] for r in rows])
    assert np.abs(got - want).max() < 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()


def test_binomial_logistic_regression_with_a_scaler_folds_into_the_head(spark):
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import StandardScaler
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    names = classes()
    two = [names.index("tench"), names.index("church")]
    frame = feature_frame(spark, "train", 10, names).where(F.col("label").isin([float(i) for i in two]))
    frame = frame.withColumn("label", (F.col("label") == float(two[1])).cast("double"))
    fitted = Pipeline(stages=[
        StandardScaler(inputCol="features", outputCol="scaled", withMean=True, withStd=True),
        LogisticRegression(featuresCol="scaled", family="binomial", regParam=0.05, maxIter=50),
    ]).fit(frame)
    scaler, lr = fitted.stages
    head = fold_scaler(head_from_spark(lr), scaler)
    assert head.num_classes == 2

    x = features("val", 3)
    probs = _softmax(head(x))
    rows = fitted.transform(feature_frame(spark, "val", 3, names)).select(
        vector_to_array("probability").alias("p")).collect()
    want = np.asarray([r["p"] for r in rows])
    assert np.abs(probs - want).max() < 1e-6


def test_tree_ensembles_are_refused_with_a_clear_message(spark):
    from pyspark.ml.classification import RandomForestClassifier

    rf = RandomForestClassifier(numTrees=2, maxDepth=2, seed=0).fit(feature_frame(spark, "train", 2, classes()))
    with pytest.raises(ValueError, match="tree ensembles cannot"):
        head_from_spark(rf)
