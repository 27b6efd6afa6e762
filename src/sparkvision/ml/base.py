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
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
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
from pyspark.sql import DataFrame, SparkSession

from sparkvision.config import QuantizeSettings
from sparkvision.models.runner import PRECISIONS, TTA_MODES, ModelSource
from sparkvision.session import is_connect

log = logging.getLogger(__name__)

EMBEDDED_METADATA = "embeddedModel"
EMBEDDED_DIR = "onnx"


def keyword_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The defaults of ``function``'s keyword-only parameters (through ``@keyword_only``'s wrapper)."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


class NotCalibratedError(ValueError):
    """An int8 stage has no calibrated graph yet."""

    def __init__(self, stage: Any) -> None:
        super().__init__(f"{type(stage).__name__}: precision='int8' needs calibrating: call calibrate(images), "
                         "or transform a DataFrame (a sample of it calibrates)")


def calibration_tensor(images: Any, source: ModelSource, input_col: str, limit: int, seed: int = 0) -> np.ndarray:
    """Preprocessed float32 NCHW calibration images from a DataFrame's ``input_col``, bytes, or a tensor."""
    from sparkvision.preprocess import ImagePreprocessor

    if isinstance(images, np.ndarray):
        return np.ascontiguousarray(images, dtype=np.float32)
    if isinstance(images, DataFrame):
        values = _sample_inputs(images, input_col, limit, seed)
    else:
        values = list(images)[:limit]
    batch = ImagePreprocessor(source.preprocess)(values)
    if not len(batch.tensor):
        raise ValueError("no decodable calibration images")
    return batch.tensor


def _sample_inputs(frame: DataFrame, input_col: str, limit: int, seed: int) -> list[Any]:
    """At most ``limit`` model inputs of ``frame`` (rows without errors), in a seeded hash order."""
    import pandas as pd
    from pyspark.sql import functions as F

    from sparkvision.io.image_source import is_image_struct, ocv_images
    from sparkvision.io.schema import ERROR, PATH

    if ERROR in frame.columns:
        frame = frame.where(F.col(ERROR).isNull())
    order = F.xxhash64(F.col(PATH) if PATH in frame.columns else F.col(input_col), F.lit(seed))
    rows = frame.where(F.col(input_col).isNotNull()).select(input_col).orderBy(order).limit(limit).collect()
    if is_image_struct(frame.schema[input_col].dataType):
        return ocv_images(pd.DataFrame([r[0].asDict() for r in rows])) if rows else []
    return [bytes(r[0]) for r in rows]


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


class HasPrecision(Params):
    precision: Param[str] = Param(
        Params._dummy(), "precision",
        "'fp32', or 'int8': the graph quantised (static QDQ, per-channel weights) and calibrated on the images "
        "given to calibrate(), else on a sample of the first frame transformed (sparkvision.deploy.int8)",
        typeConverter=TypeConverters.toString,
    )

    def getPrecision(self) -> str:
        return self.getOrDefault(self.precision)


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
        #: Images the int8 graph was calibrated on (0: not calibrated in this process).
        self.calibration_images = 0
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
        if "precision" in kwargs and kwargs["precision"] not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {kwargs['precision']!r}")
        return self._set(**kwargs)

    # ----- the model
    def _resolve_source(self) -> ModelSource:
        raise NotImplementedError

    def _must_embed(self) -> bool:
        return False

    def _source_name(self) -> str:
        raise NotImplementedError

    def _precision(self) -> str:
        return self.getPrecision() if self.hasParam("precision") else "fp32"

    def model_source(self) -> ModelSource:
        """The ONNX graph this stage runs: the embedded one if it was loaded (or calibrated) with one."""
        embedded = self._embedded
        if embedded is not None and embedded.name == self._source_name():
            if embedded.precision == self._precision():
                return embedded
            if embedded.precision == "fp32":  # a user's graph exists only embedded
                raise NotCalibratedError(self)
        if self._precision() == "int8":
            raise NotCalibratedError(self)
        return self._resolve_source()

    def calibrate(self, images: Any, limit: int | None = None, settings: QuantizeSettings | None = None):
        """Quantise this stage's graph to int8, calibrated on ``images``, and set ``precision="int8"``.

        ``images``: a DataFrame with this stage's ``inputCol`` (a seeded sample of at most
        ``limit`` rows without errors is read), encoded images (bytes), or a float32 NCHW
        tensor already preprocessed. The quantised graph is embedded when the stage is saved.
        """
        from sparkvision.deploy.int8 import quantize_source

        settings = settings or QuantizeSettings()
        fp32 = self._fp32_source()
        tensor = calibration_tensor(images, fp32, self.getInputCol(), limit or settings.calibration_images,
                                    settings.seed)
        self._embedded = quantize_source(fp32, tensor, settings)
        self.calibration_images = len(tensor)
        self._set(precision="int8")
        return self

    def _fp32_source(self) -> ModelSource:
        embedded = self._embedded
        if embedded is not None and embedded.name == self._source_name() and embedded.precision == "fp32":
            return embedded
        return self._resolve_source()

    def _prepared_source(self, dataset: DataFrame) -> ModelSource:
        """``model_source()``, calibrating an int8 stage first on a sample of ``dataset`` if it never was."""
        try:
            return self.model_source()
        except NotCalibratedError:
            log.warning("%s: precision='int8' and never calibrated; calibrating on a sample of the frame it "
                        "transforms", type(self).__name__)
            return self.calibrate(dataset).model_source()

    # ----- observability
    def _rows_counter(self, spark: SparkSession) -> Accumulator | None:
        """The accumulator behind :attr:`rows_processed`; None over Spark Connect, which has no accumulators."""
        if is_connect(spark):
            return None
        sc = spark.sparkContext
        if self._counter is None or self._counter_app != sc.applicationId:
            self._counter = sc.accumulator(0)
            self._counter_app = sc.applicationId
        return self._counter

    @property
    def rows_processed(self) -> int:
        """Rows this stage's UDF has handled in finished Spark tasks, over all its transforms.

        It shows how often the CNN really ran: a cached featurized DataFrame that is
        reused adds nothing. Over Spark Connect (no accumulators) it stays 0.
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
