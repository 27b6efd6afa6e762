"""``ImageFeaturizer``: encoded images to pretrained-CNN feature vectors, as a Spark ML Transformer.

The features are what transfer learning trains MLlib classifiers on: the backbone's
pooled penultimate layer (``output="features"``, 1280-d for efficientnet_lite0) or its
ImageNet logits (``output="logits"``). On the photo sets measured, a logistic
regression on pooled features beat or matched the one on logits, hence the default.
"""

from __future__ import annotations

from typing import Any

from pyspark import keyword_only
from pyspark.ml.functions import array_to_vector
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasOutputCol
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from sparkvision.config import FeaturizeSettings
from sparkvision.ml.base import HasModelName, HasPrecision, HasTta, OnnxImageTransformer
from sparkvision.ml.onnx_stage import RawOutput, run_model
from sparkvision.models.runner import ModelSource, from_registry
from sparkvision.session import task_cpus

OUTPUTS = ("features", "logits")


def to_vector(values: Column) -> Column:
    """array<float> to an MLlib DenseVector; null stays null."""
    return F.when(values.isNotNull(), array_to_vector(values))


class ImageFeaturizer(OnnxImageTransformer, HasOutputCol, HasModelName, HasTta, HasPrecision):
    """Adds ``outputCol`` (VectorUDT): the backbone's features of each image in ``inputCol``.

    Rows whose bytes cannot be decoded, or that already carry an error, get a null
    vector and their error in ``errorCol``; no row is dropped. The ONNX graph is
    broadcast once and each Python worker keeps one ONNX Runtime session with
    ``spark.task.cpus`` threads. ``tta="flip"`` averages each image's vector with its
    mirror image's (twice the model work). ``precision="int8"`` runs the backbone quantised
    (:meth:`calibrate`, or a sample of the first frame transformed, calibrates it).

    >>> ImageFeaturizer(inputCol="content", outputCol="features").transform(images_df)  # doctest: +SKIP
    """

    output: Param[str] = Param(
        Params._dummy(), "output", "which model output to emit: 'features' (pooled) or 'logits'",
        typeConverter=TypeConverters.toString,
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str = "content",
        outputCol: str = "features",
        modelName: str = FeaturizeSettings.model_name,
        output: str = "features",
        batchSize: int = FeaturizeSettings.batch_size,
        errorCol: str = "error",
        embedModel: bool = False,
        tta: str = "none",
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self._init_params(self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> ImageFeaturizer:
        """Set any of the constructor's parameters, checked as the constructor checks them."""
        if "output" in kwargs and kwargs["output"] not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {kwargs['output']!r}")
        return self._set_checked(kwargs)

    def getOutput(self) -> str:
        return self.getOrDefault(self.output)

    def _source_name(self) -> str:
        return self.getModelName()

    def _resolve_source(self) -> ModelSource:
        return from_registry(self.getModelName())

    def _must_embed(self) -> bool:
        from sparkvision.models import get_spec

        # A model registered from the user's ONNX file does not exist in a fresh process.
        return get_spec(self.getModelName()).is_onnx

    def num_features(self) -> int:
        """Length of the vectors this featurizer produces (read from the ONNX graph)."""
        return self._fp32_source().output_size(self.getOutput())

    def _transform(self, dataset: DataFrame) -> DataFrame:
        output = self.getOutput()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        return run_model(
            dataset, self._prepared_source(dataset), self.getInputCol(), self.getErrorCol(),
            mapper=RawOutput("values", role=output), columns={"values": (self.getOutputCol(), to_vector)},
            batch_size=self.getBatchSize(), threads=task_cpus(dataset.sparkSession),
            counter=self._rows_counter(dataset.sparkSession), tta=self.getTta(),
        )
