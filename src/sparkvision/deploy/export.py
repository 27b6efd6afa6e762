"""Serving without Spark: a fitted pipeline (featurizer + MLlib classifier) as ONE ONNX graph.

The MLlib classifier's weights are read out of the fitted model and appended to the
featurizer's ONNX graph as ``Gemm`` (+ ``Sigmoid`` between MLP layers) nodes, so the
graph maps an image tensor straight to class scores: output ``logits`` (N, classes) in
the model card's label order, whose softmax is the classifier's probability
(multinomial logistic regression and the multilayer perceptron both end in softmax).
A StandardScaler or a PCA (``fit --pca K``) between featurizer and classifier is folded into the
first layer, so the graph's ``features`` are the featurizer's own.
Tree ensembles (random forest, GBT) are not exported.

``sparkvision fit`` exports as it saves (:func:`export_pipeline`), so its model
directories serve and optimise as they are; :func:`ensure_onnx` exports a directory
saved by an older ``fit`` the first time ``serve`` or ``optimize`` meets it.

The same module makes an ``onnx`` model directory from a registered backbone, so any
registered model can be optimised and served.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparkvision.models.model_dir import (
    LABELS_FILE,
    ONNX_FILE,
    SPARK_PIPELINE_DIR,
    ModelCard,
    load_card,
    onnx_path,
    save_card,
)
from sparkvision.storage import atomic_write

log = logging.getLogger(__name__)

HEAD_FILE = "head.npz"
INPUT = "input"
LOGITS = "logits"
FEATURES = "features"

#: Card provenance key saying why a fitted pipeline has no ONNX graph.
NOT_EXPORTED = "onnx_not_exported"

#: Pipeline stages that do not change the numbers from features to class scores.
_PASS_THROUGH = {"NullVectorFiller", "StringIndexerModel", "IndexToString", "PredictionFormatter"}


class NotExportableError(ValueError):
    """The pipeline holds a stage (e.g. a tree ensemble) that cannot be written as ONNX operators."""


@dataclass
class Dense:
    """``y = x @ weight.T + bias``; weight (out, in)."""

    weight: np.ndarray
    bias: np.ndarray
    activation: str | None = None  # None or "sigmoid", applied after the affine map


@dataclass
class Head:
    """A classifier as layers from feature vectors to class scores."""

    layers: list[Dense]
    classifier: str

    @property
    def num_features(self) -> int:
        return int(self.layers[0].weight.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.layers[-1].weight.shape[0])

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Class scores in NumPy: the reference the ONNX graph is checked against."""
        x = features.astype(np.float64)
        for layer in self.layers:
            x = x @ layer.weight.T.astype(np.float64) + layer.bias
            if layer.activation == "sigmoid":
                x = 1.0 / (1.0 + np.exp(-x))
        return x

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for i, layer in enumerate(self.layers):
            arrays[f"w{i}"], arrays[f"b{i}"] = layer.weight, layer.bias
        meta = {"classifier": self.classifier, "activations": [lay.activation for lay in self.layers]}
        np.savez(path, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Head:
        data = np.load(path, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
        layers = [Dense(data[f"w{i}"], data[f"b{i}"], act) for i, act in enumerate(meta["activations"])]
        return cls(layers, meta["classifier"])


# ---------------------------------------------------------------- MLlib models to layers


def _dense(matrix: Any) -> np.ndarray:
    return np.asarray(matrix.toArray(), dtype=np.float64)


def head_from_spark(model: Any) -> Head:
    """The layers of a fitted MLlib classification model."""
    from pyspark.ml.classification import (
        LinearSVCModel,
        LogisticRegressionModel,
        MultilayerPerceptronClassificationModel,
    )

    if isinstance(model, LogisticRegressionModel):
        weight = _dense(model.coefficientMatrix)
        bias = _dense(model.interceptVector)
        if weight.shape[0] == 1 and model.numClasses == 2:
            # Binomial: P(1) = sigmoid(m) = softmax([0, m])[1].
            weight = np.vstack([np.zeros_like(weight), weight])
            bias = np.array([0.0, bias[0]])
        return Head([Dense(weight, bias)], "logistic_regression")
    if isinstance(model, LinearSVCModel):
        coef = _dense(model.coefficients)[None, :]
        # rawPrediction is [-m, m]; its softmax is a score, not a calibrated probability.
        return Head([Dense(np.vstack([-coef, coef]), np.array([-model.intercept, model.intercept]))], "linear_svc")
    if isinstance(model, MultilayerPerceptronClassificationModel):
        sizes = list(model.getLayers())
        flat = _dense(model.weights)
        layers, offset = [], 0
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            # Spark's AffineLayerModel: a column-major (out x in) matrix, then the bias.
            weight = flat[offset:offset + n_in * n_out].reshape((n_out, n_in), order="F")
            offset += n_in * n_out
            bias = flat[offset:offset + n_out]
            offset += n_out
            layers.append(Dense(weight, bias, "sigmoid" if i < len(sizes) - 2 else None))
        if offset != len(flat):
            raise ValueError(f"MLP weights hold {len(flat)} values, layers {sizes} need {offset}")
        return Head(layers, "multilayer_perceptron")
    raise NotExportableError(
        f"cannot export {type(model).__name__} to ONNX: logistic regression, linear SVC and multilayer "
        "perceptron classifiers can be exported (tree ensembles cannot); serve this model through Spark"
    )


def fold_scaler(head: Head, scaler: Any) -> Head:
    """Fold a fitted StandardScalerModel ((x - mean) / std) into the first layer."""
    mean = _dense(scaler.mean) if scaler.getWithMean() else np.zeros(head.num_features)
    std = _dense(scaler.std) if scaler.getWithStd() else np.ones(head.num_features)
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=std != 0)  # Spark maps zero-variance features to 0
    first = head.layers[0]
    weight = first.weight * scale[None, :]
    bias = first.bias - weight @ mean
    return Head([Dense(weight, bias, first.activation), *head.layers[1:]], head.classifier)


def fold_pca(head: Head, pca: Any) -> Head:
    """Fold a fitted PCAModel (``z = pc.T @ x``: MLlib projects without centring) into the first layer."""
    components = _dense(pca.pc)  # (input features, k)
    first = head.layers[0]
    return Head([Dense(first.weight @ components.T, first.bias, first.activation), *head.layers[1:]],
                head.classifier)


def fold_stages(head: Head, stages: list[Any]) -> Head:
    """Fold the StandardScaler and PCA stages between the features and the classifier (in pipeline
    order) into the head: the last one before the classifier first."""
    from pyspark.ml.feature import PCAModel

    for stage in reversed(stages):
        head = fold_pca(head, stage) if isinstance(stage, PCAModel) else fold_scaler(head, stage)
    return head


# ---------------------------------------------------------------- ONNX graph surgery


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in graph.output:
        if value.name == old:
            value.name = new


def append_head(backbone: bytes | onnx.ModelProto, feature_output: str, head: Head) -> onnx.ModelProto:
    """One graph: ``input`` -> backbone -> ``feature_output`` -> head -> ``logits`` (and ``features``)."""
    model = onnx.load_from_string(backbone) if isinstance(backbone, bytes | bytearray) else onnx.ModelProto.FromString(
        backbone.SerializeToString())
    graph = model.graph
    outputs = [o.name for o in graph.output]
    if feature_output not in outputs:
        raise ValueError(f"the featurizer graph has no output {feature_output!r} (outputs: {outputs})")
    # Free the names the head's outputs take.
    for name in (LOGITS, FEATURES):
        if name in outputs or any(name in n.output for n in graph.node):
            renamed = f"backbone_{name}"
            _rename_tensor(graph, name, renamed)
            if feature_output == name:
                feature_output = renamed
    if graph.input[0].name != INPUT:
        _rename_tensor(graph, graph.input[0].name, INPUT)
        graph.input[0].name = INPUT
    dims = next(o for o in graph.output if o.name == feature_output).type.tensor_type.shape.dim
    if dims and dims[-1].dim_value and dims[-1].dim_value != head.num_features:
        raise ValueError(f"the featurizer gives {dims[-1].dim_value} features, the classifier takes {head.num_features}")
    nodes = [helper.make_node("Identity", [feature_output], [FEATURES], name="head_features")]
    current = FEATURES
    for i, layer in enumerate(head.layers):
        w, b = f"head_w{i}", f"head_b{i}"
        graph.initializer.extend([
            numpy_helper.from_array(layer.weight.astype(np.float32), w),
            numpy_helper.from_array(layer.bias.astype(np.float32), b),
        ])
        out = LOGITS if i == len(head.layers) - 1 and layer.activation is None else f"head_dense{i}"
        nodes.append(helper.make_node("Gemm", [current, w, b], [out], transB=1, name=f"head_gemm{i}"))
        current = out
        if layer.activation == "sigmoid":
            out = LOGITS if i == len(head.layers) - 1 else f"head_act{i}"
            nodes.append(helper.make_node("Sigmoid", [current], [out], name=f"head_sigmoid{i}"))
            current = out
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", head.num_features]),
        helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", head.num_classes]),
    ])
    extracted = onnx.utils.Extractor(model).extract_model([INPUT], [FEATURES, LOGITS])
    onnx.checker.check_model(extracted)
    return extracted


# ---------------------------------------------------------------- model directories


@dataclass
class PipelineParts:
    """What a fitted sparkvision transfer pipeline is, for export."""

    backbone: bytes
    backbone_name: str
    backbone_digest: str
    feature_output: str
    head: Head
    labels: list[str]
    #: The featurizer's test-time augmentation; runners of the exported graph must repeat it.
    tta: str = "none"


def pipeline_parts(pipeline: Any) -> PipelineParts:
    """Featurizer graph, classifier head and label order of a fitted PipelineModel."""
    from pyspark.ml.feature import PCAModel, StandardScalerModel

    featurizer, head, labels = None, None, None
    linear: list[Any] = []  # StandardScaler / PCA stages between features and classifier, in pipeline order
    for stage in pipeline.stages:
        name = type(stage).__name__
        if hasattr(stage, "model_source") and hasattr(stage, "getOutput"):
            if featurizer is not None:
                raise ValueError("the pipeline has two featurizers; only one can be exported")
            featurizer = stage
        elif isinstance(stage, StandardScalerModel | PCAModel):
            linear.append(stage)
        elif name == "StringIndexerModel":
            labels = list(stage.labels)
        elif name in _PASS_THROUGH:
            continue
        elif hasattr(stage, "numClasses"):
            if featurizer is None:
                raise ValueError("the classifier comes before any featurizer; cannot export")
            head = head_from_spark(stage)
        else:
            raise NotExportableError(f"cannot export pipeline stage {name}: it is not a known sparkvision or MLlib "
                                     "stage; serve this model through Spark")
    if featurizer is None or head is None:
        raise ValueError("the pipeline needs an ImageFeaturizer and a classifier to be exported")
    head = fold_stages(head, linear)
    source = featurizer.model_source()
    output = source.output(featurizer.getOutput())
    tta = featurizer.getTta() if featurizer.hasParam("tta") else "none"
    return PipelineParts(source.data, source.name, source.digest, output, head, labels or [], tta)


def export_pipeline(spark, model_dir: str | Path, pipeline: Any = None) -> Path:
    """Write ``model.onnx`` (featurizer + classifier in one graph) into a ``spark_pipeline`` model dir.

    The card gains ``onnx: model.onnx`` and ``provenance.onnx_export``; the head's weights
    are also kept as ``head.npz`` (pruning rebuilds the model in torch from them).
    ``pipeline`` is the fitted PipelineModel when the caller holds it (else it is loaded).
    Raises :class:`NotExportableError` for classifiers ONNX cannot express.
    """
    from pyspark.ml import PipelineModel

    model_dir = Path(model_dir)
    card = load_card(model_dir)
    if not card.spark_pipeline:
        raise ValueError(f"{model_dir} holds no Spark pipeline (kind {card.kind!r}); nothing to export")
    if pipeline is None:
        pipeline = PipelineModel.load(str((model_dir / card.spark_pipeline).resolve()))
    parts = pipeline_parts(pipeline)
    if parts.labels and parts.labels != list(card.labels):
        raise ValueError(f"the pipeline's label order {parts.labels} differs from the card's {card.labels}")
    if parts.head.num_classes != len(card.labels):
        raise ValueError(f"the classifier scores {parts.head.num_classes} classes, the card names {len(card.labels)}")
    graph = append_head(parts.backbone, parts.feature_output, parts.head)
    atomic_write(model_dir / ONNX_FILE, graph.SerializeToString())
    parts.head.save(model_dir / HEAD_FILE)
    card.onnx = ONNX_FILE
    card.tta = parts.tta  # averaging the graph's logits over the mirror = the head on the averaged features
    card.provenance = {
        **{k: v for k, v in card.provenance.items() if k != NOT_EXPORTED},
        "onnx_export": {
            "backbone": parts.backbone_name, "backbone_digest": parts.backbone_digest,
            "feature_output": parts.feature_output, "classifier": parts.head.classifier,
            "head": HEAD_FILE, "layers": [list(lay.weight.shape) for lay in parts.head.layers],
        },
    }
    save_card(model_dir, card)
    log.info("exported %s (%s + %s) to %s", card.name, parts.backbone_name, parts.head.classifier,
             model_dir / ONNX_FILE)
    return model_dir / ONNX_FILE


def ensure_onnx(model_dir: str | Path, spark=None) -> Path:
    """The model directory's ``model.onnx``, exported now if an older ``sparkvision fit`` saved none.

    Spark is started only for that export (``spark`` if given); a pipeline known not to be
    exportable (a tree ensemble) is refused at once.
    """
    card = load_card(model_dir)
    if card.onnx or card.kind != "spark_pipeline":
        return onnx_path(model_dir, card)
    if card.provenance.get(NOT_EXPORTED):
        raise NotExportableError(f"{model_dir} has no model.onnx: {card.provenance[NOT_EXPORTED]}")
    log.info("%s has no model.onnx (saved by an older 'sparkvision fit'); exporting it now, once", model_dir)
    if spark is not None:
        return export_pipeline(spark, model_dir)
    from pyspark.sql import SparkSession

    from sparkvision.session import get_spark

    active = SparkSession.getActiveSession()
    spark = active or get_spark()
    try:
        return export_pipeline(spark, model_dir)
    finally:
        if active is None:
            spark.stop()  # the server itself needs no JVM


def fresh_dir(path: str | Path, overwrite: bool) -> Path:
    """An empty local directory at ``path``: created, or emptied when ``overwrite``; a non-empty one is refused."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def export_registered(name: str, out_dir: str | Path, overwrite: bool = False) -> Path:
    """An ``onnx`` model directory from a registered model with its own labels (e.g. ImageNet)."""
    from sparkvision.models import get_spec
    from sparkvision.models.onnx_export import registered_onnx

    spec = get_spec(name)
    if not spec.labels:
        raise ValueError(f"{name!r} is registered without labels; a model directory needs them")
    out_dir = fresh_dir(out_dir, overwrite)
    source = registered_onnx(name)
    shutil.copyfile(source, out_dir / ONNX_FILE)
    card = ModelCard(
        name=name, kind="onnx", labels=list(spec.labels), preprocess=spec.preprocess, architecture=name,
        provenance={"source": "registry", "model": name, "pretrained": spec.has_pretrained,
                    "description": spec.description},
    )
    save_card(out_dir, card)
    log.info("wrote model directory %s from registered %s", out_dir, name)
    return out_dir


def copy_model_dir(src: str | Path, dst: str | Path, overwrite: bool = False,
                   skip: tuple[str, ...] = (ONNX_FILE, SPARK_PIPELINE_DIR, "checkpoints", "tensorboard")) -> Path:
    """Card, labels and small side files of ``src`` into a fresh ``dst`` (the heavy parts are skipped)."""
    src, dst = Path(src), fresh_dir(dst, overwrite)
    for item in src.iterdir():
        if item.name in skip or item.name == LABELS_FILE:
            continue
        if item.is_file():
            shutil.copy2(item, dst / item.name)
    return dst


def write_head_model_dir(out_dir: str | Path, backbone_name: str, feature_output: str, head: Head,
                         labels: list[str], name: str | None = None, provenance: dict[str, Any] | None = None,
                         overwrite: bool = False) -> Path:
    """An ``onnx`` model directory: a registered backbone + a classifier head in one graph.

    For heads fitted outside a saved pipeline (e.g. MLlib on features computed once).
    """
    from sparkvision.models import get_spec
    from sparkvision.models.onnx_export import registered_onnx

    if head.num_classes != len(labels):
        raise ValueError(f"the head scores {head.num_classes} classes, {len(labels)} labels given")
    spec = get_spec(backbone_name)
    out_dir = fresh_dir(out_dir, overwrite)
    backbone = registered_onnx(backbone_name)
    graph = append_head(backbone.read_bytes(), feature_output, head)
    atomic_write(out_dir / ONNX_FILE, graph.SerializeToString())
    head.save(out_dir / HEAD_FILE)
    card = ModelCard(
        name=name or out_dir.name, kind="onnx", labels=list(labels), preprocess=spec.preprocess,
        architecture=f"{backbone_name} ({feature_output}) + {head.classifier}",
        provenance={**(provenance or {}), "onnx_export": {
            "backbone": backbone_name, "feature_output": feature_output, "classifier": head.classifier,
            "head": HEAD_FILE, "layers": [list(lay.weight.shape) for lay in head.layers]}},
    )
    save_card(out_dir, card)
    return out_dir


def verify_export(spark, model_dir: str | Path, src: str, limit: int = 200) -> dict[str, Any]:
    """Spark pipeline vs exported ONNX graph on up to ``limit`` images of SRC: agreement of
    predicted classes and the largest probability difference."""
    from pyspark.ml import PipelineModel
    from pyspark.sql import functions as F

    from sparkvision.io import load_images
    from sparkvision.models.runner import ClassifierRunner

    model_dir = Path(model_dir)
    card = load_card(model_dir)
    pipeline = PipelineModel.load(str((model_dir / card.spark_pipeline).resolve()))
    frame = load_images(spark, src, probe="header").orderBy("path").limit(limit)
    rows = (pipeline.transform(frame).where(F.col("error").isNull())
            .select("path", "content", "prediction", "probability").collect())
    if not rows:
        raise ValueError(f"no image of {src} could be predicted by the pipeline")
    runner = ClassifierRunner.from_model_dir(model_dir, threads=os.cpu_count() or 1)
    exported = runner.predict_proba([bytes(r["content"]) for r in rows])
    kept = [rows[int(i)] for i in exported.index]
    spark_probs = np.asarray([r["probability"] for r in kept], dtype=np.float64)
    predictions = runner.top1_of(exported.values)
    agree = float(np.mean([a == r["prediction"] for a, r in zip(predictions, kept, strict=True)]))
    return {"images": len(kept), "prediction_agreement": agree,
            "max_probability_difference": float(np.abs(exported.values - spark_probs).max())}
