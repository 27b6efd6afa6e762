"""``ObjectDetector``: boxes from a sparkvision detector model directory, as a Spark ML stage.

Adds ``boxesCol``, an ``array<struct<label string, score double, xmin double, ymin
double, xmax double, ymax double>>`` in pixels of each original image (as displayed,
after EXIF orientation), most confident first, and keeps or sets ``errorCol``. The
model runs in the executors through :class:`~sparkvision.detection.runner.DetectorRunner`,
the same runner (and decoder) the HTTP server and tiling use.
"""

from __future__ import annotations

from typing import Any

from pyspark import keyword_only
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.sql import DataFrame
from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType

from sparkvision.config import FeaturizeSettings
from sparkvision.detection.postprocess import DecodeSettings
from sparkvision.ml.base import OnnxImageTransformer
from sparkvision.ml.onnx_stage import OutputMapper, run_model
from sparkvision.models.runner import ModelSource, from_model_dir
from sparkvision.session import task_cpus

BOX_TYPE = StructType([
    StructField("label", StringType(), False),
    StructField("score", DoubleType(), False),
    StructField("xmin", DoubleType(), False),
    StructField("ymin", DoubleType(), False),
    StructField("xmax", DoubleType(), False),
    StructField("ymax", DoubleType(), False),
])
BOXES_TYPE = ArrayType(BOX_TYPE, False)


class DetectedBoxes(OutputMapper):
    """The decoded detections of each image as the ``boxes`` column."""

    role = "boxes"

    def __init__(self, settings: DecodeSettings) -> None:
        self.settings = settings
        self.fields = [StructField("boxes", BOXES_TYPE, True)]

    def make_runner(self, data, spec) -> Any:
        from sparkvision.detection.runner import DetectorRunner

        return DetectorRunner(data, spec.preprocess, outputs=spec.outputs, labels=spec.labels, name=spec.name,
                              key=spec.digest, threads=spec.threads, batch_size=spec.batch_size,
                              settings=self.settings)

    def __call__(self, runner, contents: list[Any]) -> dict[str, list[Any]]:
        boxes, errors = runner.detect_records(contents)
        return {"boxes": boxes, "error": errors}


class ObjectDetector(OnnxImageTransformer):
    """Runs a detector model directory (card kind ``detector``) on an image-bytes column."""

    modelDir: Param[str] = Param(Params._dummy(), "modelDir", "a sparkvision detector model directory",
                                 typeConverter=TypeConverters.toString)
    boxesCol: Param[str] = Param(Params._dummy(), "boxesCol", "output column of the detected boxes",
                                 typeConverter=TypeConverters.toString)
    scoreThreshold: Param[float] = Param(Params._dummy(), "scoreThreshold",
                                         "boxes scoring below this are dropped, in [0, 1]",
                                         typeConverter=TypeConverters.toFloat)
    iouThreshold: Param[float] = Param(Params._dummy(), "iouThreshold",
                                       "per-class NMS: a box overlapping a better one of its class by more is dropped",
                                       typeConverter=TypeConverters.toFloat)
    maxBoxes: Param[int] = Param(Params._dummy(), "maxBoxes", "at most this many boxes per image",
                                 typeConverter=TypeConverters.toInt)

    @keyword_only
    def __init__(self, *, modelDir: str = "", inputCol: str = "content", boxesCol: str = "boxes",
                 scoreThreshold: float = 0.3, iouThreshold: float = 0.5, maxBoxes: int = 100,
                 batchSize: int = FeaturizeSettings.batch_size, errorCol: str = "error",
                 embedModel: bool = False) -> None:
        super().__init__()
        self._init_params(self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> ObjectDetector:
        """Set any of the constructor's parameters, checked as the constructor checks them."""
        settings = DecodeSettings(  # validates every threshold here, on the driver
            score_threshold=float(kwargs.get("scoreThreshold", 0.3)), iou_threshold=float(kwargs.get("iouThreshold", 0.5)),
            max_boxes=int(kwargs.get("maxBoxes", 100)))
        del settings
        return self._set_checked(kwargs)

    def getModelDir(self) -> str:
        return self.getOrDefault(self.modelDir)

    def getBoxesCol(self) -> str:
        return self.getOrDefault(self.boxesCol)

    def decode_settings(self) -> DecodeSettings:
        return DecodeSettings(score_threshold=self.getOrDefault(self.scoreThreshold),
                              iou_threshold=self.getOrDefault(self.iouThreshold),
                              max_boxes=self.getOrDefault(self.maxBoxes))

    def _source_name(self) -> str:
        from sparkvision.models.model_dir import load_card

        return load_card(self.getModelDir()).name

    def _resolve_source(self) -> ModelSource:
        if not self.getModelDir():
            raise ValueError("ObjectDetector needs modelDir: a detector model directory (sparkvision train --task detect)")
        return from_model_dir(self.getModelDir())

    def _transform(self, dataset: DataFrame) -> DataFrame:
        source = self.model_source()
        if not source.labels:
            raise ValueError(f"detector {source.name!r} has no labels")
        return run_model(
            dataset, source, self.getInputCol(), self.getErrorCol(), mapper=DetectedBoxes(self.decode_settings()),
            columns={"boxes": (self.getBoxesCol(), None)}, batch_size=self.getBatchSize(),
            threads=task_cpus(dataset.sparkSession), counter=self._rows_counter(dataset.sparkSession),
        )
