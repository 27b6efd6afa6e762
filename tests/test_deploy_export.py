"""Fitted Spark pipelines as one ONNX graph: the same predictions as Spark, without Spark."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from deploy_helpers import (
    BACKBONE,
    as_older_fit,
    classes,
    feature_frame,
    features,
    link_photos,
    tensors,
)

from sparkvision.deploy.export import (
    NotExportableError,
    append_head,
    ensure_onnx,
    fold_scaler,
    head_from_spark,
    verify_export,
)
from sparkvision.models.onnx_export import registered_onnx
from sparkvision.models.runtime import OnnxModel


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_fit_saves_one_graph_predicting_like_spark_and_older_fit_models_are_exported_once(
        spark, fitted_imagenette, tmp_path):
    from sparkvision.models.model_dir import load_card
    from sparkvision.models.runner import ClassifierRunner

    model_dir = fitted_imagenette["model_dir"]
    card = load_card(model_dir)
    assert card.onnx == "model.onnx" and card.kind == "spark_pipeline"
    assert card.provenance["onnx_export"]["classifier"] == "logistic_regression"
    graph = onnx.load(str(model_dir / "model.onnx"))
    assert [o.name for o in graph.graph.output] == ["features", "logits"]
    assert graph.graph.output[1].type.tensor_type.shape.dim[1].dim_value == len(card.labels) == 10

    # Every val photo: the Spark pipeline and the ONNX graph agree on the class, and on the probabilities.
    val = str(link_photos(tmp_path, "val", 3))
    check = verify_export(spark, model_dir, val, limit=100)
    assert check["images"] == 30
    assert check["prediction_agreement"] == 1.0
    assert check["max_probability_difference"] < 1e-4

    # A directory saved before fit exported: optimize and serve export it once, to the same graph.
    older = as_older_fit(model_dir, tmp_path / "older")
    with pytest.raises(FileNotFoundError, match="sparkvision export"):
        ClassifierRunner.from_model_dir(older)
    path = ensure_onnx(older, spark)
    assert path == older / "model.onnx" and load_card(older).onnx == "model.onnx"
    assert path.read_bytes() == (model_dir / "model.onnx").read_bytes()
    assert ensure_onnx(older) == path  # already there: no Spark needed
    first = sorted((tmp_path / "val" / "tench").iterdir())[0]
    probs = ClassifierRunner.from_model_dir(older, threads=1).predict_proba([first.read_bytes()])
    assert probs.values.shape == (1, 10) and abs(probs.values.sum() - 1) < 1e-6 and probs.errors == [None]


def test_a_flip_tta_pipeline_exports_a_card_whose_runner_agrees_with_spark(spark, fitted_imagenette, tmp_path):
    """Spark averages the features of each photo and its mirror, then applies the head; the runner of
    the exported graph averages its logits over the two. For a linear head these are the same."""
    from pyspark.ml import PipelineModel

    from sparkvision.models.model_dir import load_card
    from sparkvision.models.runner import ClassifierRunner

    older = as_older_fit(fitted_imagenette["model_dir"], tmp_path / "tta")
    pipeline_dir = older / load_card(older).spark_pipeline
    pipeline = PipelineModel.load(str(pipeline_dir))
    featurizer = next(stage for stage in pipeline.stages if stage.hasParam("tta"))
    featurizer.setParams(tta="flip")
    pipeline.write().overwrite().save(str(pipeline_dir))
    ensure_onnx(older, spark)
    assert load_card(older).tta == "flip"

    val = str(link_photos(tmp_path, "val", 2))
    check = verify_export(spark, older, val, limit=100)
    assert check["images"] == 20 and check["prediction_agreement"] == 1.0
    assert check["max_probability_difference"] < 1e-4
    photos = [f.read_bytes() for f in sorted((tmp_path / "val" / "tench").iterdir())]
    flipped = ClassifierRunner.from_model_dir(older, threads=1).predict_proba(photos).values
    plain = ClassifierRunner.from_model_dir(older, threads=1, tta="none").predict_proba(photos).values
    assert np.abs(flipped - plain).max() > 1e-3  # the card's tta is applied unless overridden


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
    with pytest.raises(NotExportableError, match="tree ensembles cannot"):
        head_from_spark(rf)
