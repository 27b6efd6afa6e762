"""A model directory as Spark SQL functions: ``SELECT path, imagenette(content) FROM images``.

:func:`register` makes two temporary functions of a classifier model directory, on one
session:

``NAME(content)``
    ``struct<prediction: string, probability: array<double>, error: string>``: the
    predictions contract of ``sparkvision predict`` (probabilities in the card's
    ``labels`` order); a row whose bytes do not decode gets nulls and its error.
``NAME_features(content)``
    ``array<float>``: the pooled features the classifier reads (the graph's
    ``features`` output, 1280 values for EfficientNet-Lite0), null where the image does
    not decode (``NAME(content).error`` says why). A plain array rather than an MLlib
    vector, so SQL's array functions take it; ``pyspark.ml.functions.array_to_vector``
    turns it into one. Registered only when the graph has that output.

``content`` is encoded image bytes (``binary``: a sparkvision dataset's or the
``binaryFile`` source's ``content``). Both functions run the directory's ``model.onnx``
through the kernel of :class:`~sparkvision.ml.predictor.ImagePredictor` and
:class:`~sparkvision.ml.featurizer.ImageFeaturizer` (the graph shipped once by
:func:`~sparkvision.ml.onnx_stage.ship_model`, one ONNX Runtime session per Python worker, decode and preprocessing by the model's card),
so they give what batch prediction gives. A ``spark_pipeline`` model (``sparkvision
fit``) runs its ``model.onnx``, the exported pipeline that ``export`` checked against
Spark; one without it (random forests, GBTs) cannot be a SQL function.

Classic sessions and Spark Connect alike: over Connect the graph travels as a session artifact.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from sparkvision import storage
from sparkvision.config import FeaturizeSettings

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FEATURES_SUFFIX = "_features"


@dataclass(frozen=True)
class SqlFunctions:
    """What :func:`register` registered."""

    #: ``NAME(content)``: the prediction struct.
    predict: str
    #: ``NAME_features(content)``: the feature vector; None when the model has no ``features`` output.
    features: str | None
    model_dir: str
    #: The order of ``probability``.
    labels: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def function_name(text: str) -> str:
    """A model name as a SQL function name: letters, digits and ``_``, not starting with a digit."""
    name = re.sub(r"\W+", "_", text).strip("_")
    return name if _NAME.fullmatch(name) else f"m_{name}"


def register(spark: SparkSession, model_dir: str | Path, name: str | None = None, *,
             batch_size: int | None = None, tta: str | None = None) -> SqlFunctions:
    """Register ``NAME`` and ``NAME_features`` for the classifier in ``model_dir`` (default NAME: the card's name).

    ``tta`` defaults to the card's (what the model was validated with). Registering
    the same name again replaces the functions.
    """
    from sparkvision.ml.onnx_stage import ClassProbabilities, KernelSpec, RawOutput, make_udf, ship_model
    from sparkvision.models.model_dir import load_card
    from sparkvision.models.runner import from_model_dir
    from sparkvision.session import task_cpus

    model_dir = Path(storage.local_path(model_dir)).resolve()
    card = load_card(model_dir)
    name = name or function_name(card.name)
    if not _NAME.fullmatch(name):
        raise ValueError(f"function name {name!r} is not a SQL identifier (letters, digits and _, not starting "
                         "with a digit)")
    if card.kind == "detector":
        raise ValueError(f"{model_dir} is a detector; SQL functions take classifiers (use 'sparkvision detect')")
    source = from_model_dir(model_dir, card)  # a missing model.onnx fails here, saying how to add one
    model = ship_model(spark, source)
    threads = task_cpus(spark)
    batch = batch_size or FeaturizeSettings.batch_size

    def spec(mapper: Any) -> KernelSpec:
        return KernelSpec(source.name, source.digest, source.preprocess, dict(source.outputs), source.labels,
                          batch, threads, mapper, tta or card.tta)

    spark.udf.register(name, make_udf(model, spec(ClassProbabilities(card.labels, probability=True)), None))
    features = None
    if "features" in source.outputs:
        features = name + FEATURES_SUFFIX
        spark.udf.register(features, make_udf(model, spec(RawOutput("features", role="features")), None,
                                              field="features"))
    else:
        log.info("%s has no 'features' output: %s%s is not registered", model_dir, name, FEATURES_SUFFIX)
    log.info("registered SQL function %s%s for %s", name, f" and {features}" if features else "", model_dir)
    return SqlFunctions(name, features, str(model_dir), list(card.labels))


__all__ = ["SqlFunctions", "function_name", "register"]
