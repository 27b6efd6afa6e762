"""Params and persistence shared by sparkvision's Spark ML stages that run an ONNX image model.

Stages follow pyspark.ml's conventions (declared ``Param``s with type converters,
``@keyword_only`` constructors, ``DefaultParamsReadable/Writable``), so they drop into
``Pipeline``, ``CrossValidator`` and saved ``PipelineModel``s. Saving goes through a
writer that can embed the ONNX graph in the stage's directory (as a one-row Parquet
file, so it works on any Hadoop filesystem): a saved stage then needs nothing but
sparkvision to load, even in a process where the model was never registered.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from pyspark import Accumulator
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
)
from pyspark.sql import SparkSession

from sparkvision.models.runner import TTA_MODES, ModelSource

EMBEDDED_METADATA = "embeddedModel"
EMBEDDED_DIR = "onnx"


def keyword_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The defaults of ``function``'s keyword-only parameters (through ``@keyword_only``'s wrapper)."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


class HasBatchSize(Params):
    batchSize: Param[int] = Param(
        Params._dummy(), "batchSize",
        "images per ONNX Runtime call inside a task (small batches stay in CPU cache)",
        typeConverter=TypeConverters.toInt,
    )

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)


class HasErrorCol(Params):
    errorCol: Param[str] = Param(
        Params._dummy(), "errorCol",
        "column of per-row errors ('<kind>: <detail>' or null); an error already there is kept",
        typeConverter=TypeConverters.toString,
    )

    def getErrorCol(self) -> str:
        return self.getOrDefault(self.errorCol)


class HasModelName(Params):
    modelName: Param[str] = Param(
        Params._dummy(), "modelName", "name of a backbone in sparkvision's model registry",
        typeConverter=TypeConverters.toString,
    )

    def getModelName(self) -> str:
        return self.getOrDefault(self.modelName)


class HasTta(Params):
    tta: Param[str] = Param(
        Params._dummy(), "tta",
        "test-time augmentation: 'none', or 'flip' to average the outputs of each image and its mirror "
        "image (twice the model work)",
        typeConverter=TypeConverters.toString,
    )

    def getTta(self) -> str:
        return self.getOrDefault(self.tta)


class HasEmbedModel(Params):
    embedModel: Param[bool] = Param(
        Params._dummy(), "embedModel",
        "when saving, copy the ONNX graph into the stage's directory (always done for models "
        "registered from the user's own ONNX file)",
        typeConverter=TypeConverters.toBoolean,
    )

    def getEmbedModel(self) -> bool:
        return self.getOrDefault(self.embedModel)


class OnnxImageTransformer(
    Transformer, HasInputCol, HasBatchSize, HasErrorCol, HasEmbedModel, DefaultParamsReadable, DefaultParamsWritable
):
    """Base of the stages that run an ONNX model on an image column: encoded bytes, or the ``image``
    struct of ``spark.read.format("image")`` (:mod:`sparkvision.io.image_source`).

    Subclasses implement ``_resolve_source()`` (where the model comes from when nothing
    is embedded) and ``_must_embed()``; they read the model through ``model_source()``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._embedded: ModelSource | None = None
        self._counter: Accumulator | None = None
        self._counter_app: str | None = None

    # ----- params
    # The constructor's keyword-only signature is the one declaration of a stage's parameters and their
    # defaults; ``setParams(**kwargs)`` takes the same names, as pyspark.ml's own stages do.
    def _init_params(self, kwargs: dict[str, Any]) -> None:
        """The constructor's work: its own signature's defaults, then the caller's ``kwargs`` through ``setParams``."""
        self._setDefault(**keyword_defaults(type(self).__init__))
        self.setParams(**kwargs)

    def _set_checked(self, kwargs: dict[str, Any]):
        """``setParams``' end: the names must be the constructor's, ``batchSize >= 1``, a known ``tta``; then set."""
        unknown = sorted(set(kwargs) - set(keyword_defaults(type(self).__init__)))
        if unknown:
            raise TypeError(f"{type(self).__name__}.setParams() got unknown parameters {unknown}")
        if "batchSize" in kwargs and int(kwargs["batchSize"]) < 1:
            raise ValueError(f"batchSize must be >= 1, got {kwargs['batchSize']!r}")
        if "tta" in kwargs and kwargs["tta"] not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {kwargs['tta']!r}")
        return self._set(**kwargs)

    # ----- the model
    def _resolve_source(self) -> ModelSource:
        raise NotImplementedError

    def _must_embed(self) -> bool:
        return False

    def _source_name(self) -> str:
        raise NotImplementedError

    def model_source(self) -> ModelSource:
        """The ONNX graph this stage runs: the embedded one if it was loaded with one."""
        if self._embedded is not None and self._embedded.name == self._source_name():
            return self._embedded
        return self._resolve_source()

    # ----- observability
    def _rows_counter(self, spark: SparkSession) -> Accumulator:
        sc = spark.sparkContext
        if self._counter is None or self._counter_app != sc.applicationId:
            self._counter = sc.accumulator(0)
            self._counter_app = sc.applicationId
        return self._counter

    @property
    def rows_processed(self) -> int:
        """Rows this stage's UDF has handled in finished Spark tasks, over all its transforms.

        It shows how often the CNN really ran: a cached featurized DataFrame that is
        reused adds nothing.
        """
        return int(self._counter.value) if self._counter is not None else 0

    # ----- persistence
    def write(self) -> _OnnxStageWriter:
        return _OnnxStageWriter(self)

    @classmethod
    def read(cls) -> _OnnxStageReader:
        return _OnnxStageReader(cls)


class _OnnxStageWriter(DefaultParamsWriter):
    def saveImpl(self, path: str) -> None:
        stage: OnnxImageTransformer = self.instance  # type: ignore[assignment]
        embed = stage._embedded is not None or stage.getEmbedModel() or stage._must_embed()
        source = stage.model_source() if embed else None
        extra = {EMBEDDED_METADATA: source.describe()} if source is not None else None
        DefaultParamsWriter.saveMetadata(stage, path, self.sparkSession, extraMetadata=extra)
        if source is not None:
            frame = self.sparkSession.createDataFrame([(bytearray(source.data),)], "onnx binary")
            frame.coalesce(1).write.parquet(os.path.join(path, EMBEDDED_DIR))


class _OnnxStageReader(DefaultParamsReader):
    def load(self, path: str):
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        stage = super().load(path)
        described = metadata.get(EMBEDDED_METADATA)
        if described:
            row = self.sparkSession.read.parquet(os.path.join(path, EMBEDDED_DIR)).first()
            if row is None:
                raise FileNotFoundError(f"saved stage {path} names an embedded ONNX model but holds none")
            stage._embedded = ModelSource.from_description(bytes(row[0]), described)
        return stage
