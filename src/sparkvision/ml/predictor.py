"""``ImagePredictor``: class predictions straight from an ONNX model's logits, no training.

Two uses, one stage:

* ``ImagePredictor(modelName="efficientnet_lite0", topK=5)``: ImageNet top-k labels and
  probabilities for any image column, like Databricks' ``DeepImagePredictor``.
* ``ImagePredictor(modelDir=MODEL_DIR)``: runs a sparkvision model directory of kind
  ``onnx`` (``model.onnx`` with output ``logits``, labels and preprocessing from its
  card), e.g. a CNN trained by ``sparkvision train``, producing the predictions
  columns (``prediction``, ``probability`` in the card's label order, ``error``).

``probability`` is the softmax of the logits in the model's label order (the registry
entry's labels, or the card's ``labels``); ``top_k`` is an array of
``struct<label, probability>``, most probable first.
"""

from __future__ import annotations

from typing import Any

from pyspark import keyword_only
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.sql import DataFrame

from sparkvision.config import FeaturizeSettings
from sparkvision.ml.base import HasModelName, HasPrecision, HasTta, OnnxImageTransformer
from sparkvision.ml.onnx_stage import ClassProbabilities, run_model
from sparkvision.models.runner import ModelSource, from_model_dir, from_registry
from sparkvision.session import task_cpus


class ImagePredictor(OnnxImageTransformer, HasModelName, HasTta, HasPrecision):
    """Adds ``predictionCol`` (top-1 label), ``probabilityCol`` (all classes) and ``topKCol``.

    Set ``probabilityCol`` to "" or ``topK`` to 0 to leave that column out. Rows that
    cannot be decoded (or already carry an error) get nulls and their error.
    """

    modelDir: Param[str] = Param(
        Params._dummy(), "modelDir",
        "a sparkvision model directory of kind 'onnx' to run instead of a registry model ('' = use modelName)",
        typeConverter=TypeConverters.toString,
    )
    predictionCol: Param[str] = Param(
        Params._dummy(), "predictionCol", "output column of the most probable label", TypeConverters.toString
    )
    probabilityCol: Param[str] = Param(
        Params._dummy(), "probabilityCol",
        "output column of every class's probability, in the model's label order ('' to omit)",
        TypeConverters.toString,
    )
    topK: Param[int] = Param(
        Params._dummy(), "topK", "how many (label, probability) pairs topKCol holds (0 to omit)",
        TypeConverters.toInt,
    )
    topKCol: Param[str] = Param(
        Params._dummy(), "topKCol", "output column of the top-k (label, probability) pairs", TypeConverters.toString
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str = "content",
        modelName: str = FeaturizeSettings.model_name,
        modelDir: str = "",
        predictionCol: str = "prediction",
        probabilityCol: str = "probability",
        topK: int = 5,
        topKCol: str = "top_k",
        batchSize: int = FeaturizeSettings.batch_size,
        errorCol: str = "error",
        embedModel: bool = False,
        tta: str = "none",
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self._init_params(self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> ImagePredictor:
        """Set any of the constructor's parameters, checked as the constructor checks them."""
        if "topK" in kwargs and int(kwargs["topK"]) < 0:
            raise ValueError(f"topK must be >= 0, got {kwargs['topK']!r}")
        return self._set_checked(kwargs)

    def getModelDir(self) -> str:
        return self.getOrDefault(self.modelDir)

    def getPredictionCol(self) -> str:
        return self.getOrDefault(self.predictionCol)

    def getProbabilityCol(self) -> str:
        return self.getOrDefault(self.probabilityCol)

    def getTopK(self) -> int:
        return self.getOrDefault(self.topK)

    def getTopKCol(self) -> str:
        return self.getOrDefault(self.topKCol)

    def _source_name(self) -> str:
        if self.getModelDir():
            from sparkvision.models.model_dir import load_card

            return load_card(self.getModelDir()).name
        return self.getModelName()

    def _resolve_source(self) -> ModelSource:
        return from_model_dir(self.getModelDir()) if self.getModelDir() else from_registry(self.getModelName())

    def _must_embed(self) -> bool:
        if self.getModelDir():
            return False  # the model directory is the artefact; the stage refers to it
        from sparkvision.models import get_spec

        return get_spec(self.getModelName()).is_onnx

    def labels(self) -> list[str]:
        """Class names in probability order."""
        source = self._fp32_source()
        if not source.labels:
            raise ValueError(f"model {source.name!r} has no labels; register it with labels to predict classes")
        return list(source.labels)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        source = self._prepared_source(dataset)
        labels = self.labels()
        top_k = self.getTopK() if self.getTopKCol() else 0
        mapper = ClassProbabilities(labels, probability=bool(self.getProbabilityCol()), top_k=top_k)
        columns = {
            "prediction": (self.getPredictionCol(), None),
            "probability": (self.getProbabilityCol(), None),
            "top_k": (self.getTopKCol() if top_k else "", None),
        }
        return run_model(
            dataset, source, self.getInputCol(), self.getErrorCol(), mapper=mapper,
            columns=columns, batch_size=self.getBatchSize(), threads=task_cpus(dataset.sparkSession),
            counter=self._rows_counter(dataset.sparkSession), tta=self.getTta(),
        )
