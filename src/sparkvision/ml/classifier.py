"""Transfer learning: a frozen pretrained backbone's features + an MLlib classifier, as one PipelineModel.

The fitted model is a plain Spark ``PipelineModel`` of six stages (seven with ``--pca K``)::

    ImageFeaturizer      content -> features (null on a bad row, with its error)
    NullVectorFiller     features -> features_filled (zeros where null: MLlib cannot score nulls)
    [PCAModel]           features_filled -> features_pca (K principal components; only with settings.pca)
    StringIndexerModel   label -> label_index (alphabetical; unseen/null labels are kept, not fatal)
    classifier model     features_filled (or features_pca) -> raw_prediction, probability_vector, prediction_index
                         (one-vs-rest GBT: rawPrediction margins and prediction_index)
    IndexToString        prediction_index -> predicted_label
    PredictionFormatter  -> prediction (class name), probability (array<double>), both null on error

``probability`` follows the StringIndexer's label order, which the model directory's
card records as ``labels``. Fitting featurizes the training images once and caches
the vectors, so model selection never runs the CNN again: logistic regression's
``regParam`` and ``standardization`` are chosen by k-fold cross-validation on those
vectors by default (:mod:`sparkvision.ml.selection`), and ``--grid`` searches the other
classifiers' parameters with ``CrossValidator``. The fitted pieces are then assembled
into the model above.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pyspark import StorageLevel, keyword_only
from pyspark.ml import Estimator, Model, PipelineModel, Transformer
from pyspark.ml.classification import (
    GBTClassifier,
    LogisticRegression,
    LogisticRegressionModel,
    MultilayerPerceptronClassifier,
    OneVsRest,
    RandomForestClassifier,
)
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.feature import PCA, IndexToString, StringIndexer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkvision import storage
from sparkvision.config import PreprocessConfig, TransferSettings
from sparkvision.io.schema import CONTENT, ERROR, LABEL, PATH
from sparkvision.ml.base import HasErrorCol
from sparkvision.ml.featurizer import ImageFeaturizer
from sparkvision.session import is_connect

log = logging.getLogger(__name__)

# Column names inside the fitted pipeline.
FEATURES = "features"
FEATURES_FILLED = "features_filled"
FEATURES_PCA = "features_pca"
LABEL_INDEX = "label_index"
RAW_PREDICTION = "raw_prediction"
PROBABILITY_VECTOR = "probability_vector"
PREDICTION_INDEX = "prediction_index"
PREDICTED_LABEL = "predicted_label"
PREDICTION = "prediction"
PROBABILITY = "probability"
#: OneVsRest keeps Spark's default raw column: its binary models write their margins under
#: their own rawPredictionCol, and a loaded OneVsRestModel forgets a renamed one.
OVR_RAW_PREDICTION = "rawPrediction"

CLASSIFIERS = ("logreg", "rf", "gbt", "mlp")


# ---------------------------------------------------------------- small stages


class NullVectorFiller(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """Copies a vector column, zeros where it is null, so MLlib models can score every row.

    Rows filled here are bad rows; :class:`PredictionFormatter` nulls their outputs again.
    """

    size: Param[int] = Param(Params._dummy(), "size", "length of the vectors", TypeConverters.toInt)

    @keyword_only
    def __init__(self, *, inputCol: str = FEATURES, outputCol: str = FEATURES_FILLED, size: int = 0) -> None:
        super().__init__()
        self._setDefault(inputCol=FEATURES, outputCol=FEATURES_FILLED, size=0)
        self._set(**self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        size = self.getOrDefault(self.size)
        if size < 1:
            raise ValueError(f"NullVectorFiller needs size >= 1, got {size}")
        zeros = array_to_vector(F.array_repeat(F.lit(0.0), size))
        return dataset.withColumn(self.getOutputCol(), F.coalesce(F.col(self.getInputCol()), zeros))


class PredictionFormatter(Transformer, HasErrorCol, DefaultParamsReadable, DefaultParamsWritable):
    """The predictions contract: ``prediction`` (class name) and ``probability`` (array<double>
    in the label order), both null on rows with an error.

    ``probabilityMode``: ``vector`` copies the classifier's probability vector;
    ``ovr_margin`` turns one-vs-rest GBT margins F into sigmoid(2F) per class,
    normalised to sum to 1 (OneVsRest models give no probabilities of their own).
    """

    labelCol: Param[str] = Param(Params._dummy(), "labelCol", "predicted class name column", TypeConverters.toString)
    sourceCol: Param[str] = Param(
        Params._dummy(), "sourceCol", "probability vector (or raw margins) column", TypeConverters.toString
    )
    probabilityMode: Param[str] = Param(
        Params._dummy(), "probabilityMode", "'vector' or 'ovr_margin'", TypeConverters.toString
    )
    predictionCol: Param[str] = Param(Params._dummy(), "predictionCol", "output class name", TypeConverters.toString)
    probabilityCol: Param[str] = Param(
        Params._dummy(), "probabilityCol", "output probabilities", TypeConverters.toString
    )

    @keyword_only
    def __init__(
        self,
        *,
        labelCol: str = PREDICTED_LABEL,
        sourceCol: str = PROBABILITY_VECTOR,
        probabilityMode: str = "vector",
        predictionCol: str = PREDICTION,
        probabilityCol: str = PROBABILITY,
        errorCol: str = ERROR,
    ) -> None:
        super().__init__()
        self._setDefault(
            labelCol=PREDICTED_LABEL, sourceCol=PROBABILITY_VECTOR, probabilityMode="vector",
            predictionCol=PREDICTION, probabilityCol=PROBABILITY, errorCol=ERROR,
        )
        self._set(**self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        mode = self.getOrDefault(self.probabilityMode)
        values = vector_to_array(F.col(self.getOrDefault(self.sourceCol)), "float64")
        if mode == "ovr_margin":
            sig = F.transform(values, lambda m: 1.0 / (1.0 + F.exp(-2.0 * m)))
            total = F.aggregate(sig, F.lit(0.0), lambda acc, x: acc + x)
            probability = F.transform(sig, lambda x: x / total)
        elif mode == "vector":
            probability = values
        else:
            raise ValueError(f"probabilityMode must be 'vector' or 'ovr_margin', got {mode!r}")
        ok = F.col(self.getErrorCol()).isNull()
        return dataset.withColumns({
            self.getOrDefault(self.predictionCol): F.when(ok, F.col(self.getOrDefault(self.labelCol))),
            self.getOrDefault(self.probabilityCol): F.when(ok, probability),
        })


# ---------------------------------------------------------------- classifiers


def head_input(settings: TransferSettings) -> str:
    """The column the classifier learns from: the principal components with ``settings.pca``, else the features."""
    return FEATURES_PCA if settings.pca else FEATURES_FILLED


def build_classifier(settings: TransferSettings, num_features: int, num_classes: int) -> Estimator:
    """The MLlib estimator named by ``settings.classifier``, wired to the pipeline's columns.

    Logistic regression's ``regParam`` and ``standardization`` left at None in ``settings``
    (chosen by cross-validation in :func:`fit_head`) get MLlib's defaults here.
    """
    cols = {"featuresCol": head_input(settings), "labelCol": LABEL_INDEX, "predictionCol": PREDICTION_INDEX}
    probabilistic = {**cols, "rawPredictionCol": RAW_PREDICTION, "probabilityCol": PROBABILITY_VECTOR}
    name = settings.classifier
    if name == "logreg":
        fixed = {k: v for k, v in (("regParam", settings.logreg_reg_param),
                                    ("standardization", settings.logreg_standardization)) if v is not None}
        return LogisticRegression(
            family="multinomial", elasticNetParam=settings.logreg_elastic_net, maxIter=settings.logreg_max_iter,
            **fixed, **probabilistic,
        )
    if name == "rf":
        return RandomForestClassifier(
            numTrees=settings.rf_num_trees, maxDepth=settings.rf_max_depth, seed=settings.seed, **probabilistic,
        )
    if name == "gbt":
        return OneVsRest(classifier=_gbt(settings.gbt_max_iter, settings.gbt_max_depth, settings.seed,
                                         head_input(settings)), **cols)
    if name == "mlp":
        return MultilayerPerceptronClassifier(
            layers=[num_features, *settings.mlp_hidden, num_classes], maxIter=settings.mlp_max_iter,
            seed=settings.seed, **probabilistic,
        )
    raise ValueError(f"unknown classifier {name!r}; choose one of {CLASSIFIERS}")


def _gbt(max_iter: int, max_depth: int, seed: int, features_col: str) -> GBTClassifier:
    return GBTClassifier(maxIter=max_iter, maxDepth=max_depth, seed=seed, featuresCol=features_col,
                         labelCol=LABEL_INDEX)


def param_grid(settings: TransferSettings, estimator: Estimator, num_features: int, num_classes: int) -> list:
    """The ``CrossValidator`` grid of ``--grid`` for rf, gbt and mlp (values in ``TransferSettings``;
    logistic regression's grid is searched by :func:`fit_head` instead)."""
    grid = ParamGridBuilder()
    name = settings.classifier
    if name == "rf":
        grid.addGrid(estimator.numTrees, list(settings.rf_grid_trees))
        grid.addGrid(estimator.maxDepth, list(settings.rf_grid_depth))
    elif name == "gbt":
        grid.addGrid(estimator.classifier, [
            _gbt(i, d, settings.seed, head_input(settings)) for i in settings.gbt_grid_iter
            for d in settings.gbt_grid_depth
        ])
    elif name == "mlp":
        grid.addGrid(estimator.layers, [[num_features, *h, num_classes] for h in settings.mlp_grid_hidden])
        grid.addGrid(estimator.stepSize, list(settings.mlp_grid_step))
    return grid.build()


def _describe_params(model: Model | Estimator, name: str) -> dict[str, Any]:
    """The classifier's tunable parameters as plain values, for provenance."""
    keys = {
        "logreg": ["regParam", "standardization", "elasticNetParam", "maxIter", "family"],
        "rf": ["numTrees", "maxDepth", "seed"],
        "mlp": ["layers", "maxIter", "stepSize", "seed"],
    }.get(name, [])
    params: dict[str, Any] = {}
    target: Any = model
    if name == "gbt":
        target = model.getClassifier() if hasattr(model, "getClassifier") else model.getOrDefault("classifier")
        keys = ["maxIter", "maxDepth", "seed"]
    for key in keys:
        if target.hasParam(key) and target.isDefined(target.getParam(key)):
            value = target.getOrDefault(target.getParam(key))
            params[key] = list(value) if isinstance(value, list | tuple) else value
    return params


# ---------------------------------------------------------------- fitting


@dataclass
class HeadFit:
    """A fitted classifier on feature vectors, with how its parameters were chosen."""

    model: Model
    #: One entry per candidate: {"params": {...}, "cv_accuracy": ...} (and "cv_log_loss" for logreg).
    grid_results: list[dict[str, Any]] = field(default_factory=list)
    #: Logistic regression's cross-validated choice (:meth:`LogRegSelection.to_dict` without the candidates).
    selection: dict[str, Any] | None = None


def _selects_logreg(settings: TransferSettings) -> bool:
    return settings.classifier == "logreg" and (
        settings.grid or settings.logreg_reg_param is None or settings.logreg_standardization is None)


def feature_matrix(prepared: DataFrame, max_rows: int, seed: int, total: int | None = None,
                   features_col: str = FEATURES_FILLED) -> tuple[np.ndarray, np.ndarray]:
    """(features, label index) of ``prepared`` on the driver; above ``max_rows``, a stratified seeded sample."""
    total = prepared.count() if total is None else total
    if total > max_rows:
        classes = [r[0] for r in prepared.select(LABEL_INDEX).distinct().collect()]
        prepared = prepared.sampleBy(LABEL_INDEX, {c: max_rows / total for c in classes}, seed)
    rows = prepared.select(vector_to_array(features_col).alias("x"), LABEL_INDEX).toPandas()
    features = np.stack(rows["x"].to_numpy()) if len(rows) else np.empty((0, 0))
    return features, rows[LABEL_INDEX].to_numpy()


def logreg_model(estimator: LogisticRegression, coefficients: np.ndarray,
                 intercepts: np.ndarray, prepared: DataFrame | None = None) -> LogisticRegressionModel:
    """The multinomial MLlib model with these parameters, as ``estimator.fit`` returns one.

    A classic session builds it in the JVM directly. Over Spark Connect (no JVM here) MLlib fits it
    on ``prepared`` with every coefficient and intercept bounded to its value from above and below,
    so its optimiser has nothing to move: a few Spark jobs instead of one per L-BFGS step.
    """
    if prepared is not None and is_connect(prepared.sparkSession):
        k, d = coefficients.shape
        matrix = DenseMatrix(k, d, np.asarray(coefficients, dtype=np.float64).ravel(order="F").tolist())
        vector = DenseVector(np.asarray(intercepts, dtype=np.float64).tolist())
        pinned = estimator.copy({estimator.lowerBoundsOnCoefficients: matrix,
                                 estimator.upperBoundsOnCoefficients: matrix,
                                 estimator.lowerBoundsOnIntercepts: vector,
                                 estimator.upperBoundsOnIntercepts: vector})
        return pinned.fit(prepared)
    from pyspark import SparkContext
    from pyspark.ml.common import _py2java

    sc = SparkContext._active_spark_context
    k, d = coefficients.shape
    matrix = DenseMatrix(k, d, np.asarray(coefficients, dtype=np.float64).ravel(order="F").tolist())
    java = sc._jvm.org.apache.spark.ml.classification.LogisticRegressionModel(
        estimator.uid, _py2java(sc, matrix), _py2java(sc, DenseVector(np.asarray(intercepts).tolist())), k, True)
    return estimator._copyValues(LogisticRegressionModel(java))


def fit_head(prepared: DataFrame, settings: TransferSettings, num_features: int, num_classes: int) -> HeadFit:
    """Fit ``settings.classifier`` on cached (features, label index) rows, choosing its parameters first.

    Logistic regression: a ``regParam`` or ``standardization`` left at None (the default),
    or all of ``logreg_grid_reg`` with ``settings.grid``, is chosen by k-fold CV on the
    vectors (:func:`sparkvision.ml.selection.select_logreg`). The chosen model on every row
    is solved on the driver when every row is there already (:func:`~sparkvision.ml.selection.fit_logreg`,
    the same optimum as MLlib's, handed to MLlib by :func:`logreg_model`); above
    ``logreg_select_max_rows`` rows, MLlib fits it. Other classifiers:
    ``settings.grid`` runs MLlib's ``CrossValidator``.
    """
    if _selects_logreg(settings):
        from sparkvision.ml.selection import fit_logreg, select_logreg

        total = prepared.count()
        features, labels = feature_matrix(prepared, settings.logreg_select_max_rows, settings.seed, total,
                                          head_input(settings))
        fixed_reg = None if settings.grid else settings.logreg_reg_param
        chosen = select_logreg(
            features, labels,
            reg_grid=[fixed_reg] if fixed_reg is not None else settings.logreg_grid_reg,
            standardization=(True, False) if settings.logreg_standardization is None
            else (settings.logreg_standardization,),
            folds=settings.grid_folds, seed=settings.seed, max_iter=settings.logreg_select_max_iter,
            grid_limits=(fixed_reg, fixed_reg) if fixed_reg is not None else (1e-7, 100.0),
        )
        resolved = replace(settings, logreg_reg_param=chosen.reg_param, logreg_standardization=chosen.standardization)
        estimator = build_classifier(resolved, num_features, num_classes)
        if total <= settings.logreg_select_max_rows and len(np.unique(labels)) == num_classes:
            # Every row is on the driver already: solve MLlib's objective there (seconds) and
            # hand MLlib the optimum, instead of one Spark job per L-BFGS step (minutes).
            coefficients, intercepts = fit_logreg(features, labels, num_classes, chosen.reg_param,
                                                  chosen.standardization, max_iter=settings.logreg_max_iter)
            model = logreg_model(estimator, coefficients, intercepts, prepared)
        else:
            model = estimator.fit(prepared)
        results = [{"params": {"regParam": s.reg_param, "standardization": s.standardization},
                    "cv_accuracy": s.cv_accuracy, "cv_log_loss": s.cv_log_loss} for s in chosen.scores]
        summary = {k: v for k, v in chosen.to_dict().items() if k != "candidates"}
        return HeadFit(model, results, summary)
    estimator = build_classifier(settings, num_features, num_classes)
    if not settings.grid:
        return HeadFit(estimator.fit(prepared))
    grid = param_grid(settings, estimator, num_features, num_classes)
    evaluator = MulticlassClassificationEvaluator(
        labelCol=LABEL_INDEX, predictionCol=PREDICTION_INDEX, metricName="accuracy"
    )
    search = CrossValidator(
        estimator=estimator, estimatorParamMaps=grid, evaluator=evaluator,
        numFolds=settings.grid_folds, seed=settings.seed, parallelism=1,
    )
    cv_model = search.fit(prepared)
    results = [{"params": {p.name: _plain(v) for p, v in params.items()}, "cv_accuracy": float(score)}
               for params, score in zip(grid, cv_model.avgMetrics, strict=True)]
    log.info("grid search: %s", results)
    return HeadFit(cv_model.bestModel, results)


@dataclass
class TransferModel:
    """A fitted transfer-learning model and what it was made from."""

    pipeline: PipelineModel
    labels: list[str]
    preprocess: PreprocessConfig
    settings: TransferSettings
    classifier_params: dict[str, Any]
    featurizer: ImageFeaturizer
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    grid_results: list[dict[str, Any]] = field(default_factory=list)
    #: The reference profile of its validation predictions (:class:`sparkvision.drift.Profile`), saved as
    #: ``drift_profile.json``; None when fitted without validation rows.
    drift_profile: Any = None

    def transform(self, frame: DataFrame) -> DataFrame:
        return self.pipeline.transform(frame)

    def save(self, out: str, overwrite: bool = False, name: str | None = None, onnx: bool = True) -> Path:
        """Write a model directory of kind ``spark_pipeline`` (atomically: staged, then renamed).

        With ``onnx`` it also holds ``model.onnx`` (featurizer + classifier as one graph,
        see :mod:`sparkvision.deploy.export`), so ``serve`` and ``optimize`` take it as it
        is; a classifier ONNX cannot express (a tree ensemble) is noted in the card instead.
        """
        from sparkvision.models.model_dir import SPARK_PIPELINE_DIR, ModelCard, save_card

        spark = SparkSession.active()
        out_path = Path(storage.local_path(out)).resolve()
        card = ModelCard(
            name=name or out_path.name,
            kind="spark_pipeline",
            labels=list(self.labels),
            preprocess=self.preprocess,
            architecture=f"{self.settings.model_name} ({self.settings.output})"
            f"{f' + PCA {self.settings.pca}' if self.settings.pca else ''} + MLlib {self.settings.classifier}"
            f"{' (int8 backbone)' if self.provenance.get('precision') == 'int8' else ''}",
            onnx=None,
            spark_pipeline=SPARK_PIPELINE_DIR,
            tta=self.settings.tta,
            provenance=self.provenance,
            metrics=self.metrics,
        )
        with storage.atomic_dir(storage.file_uri(out_path), spark, overwrite=overwrite) as staging:
            self.pipeline.write().save(f"{staging}/{SPARK_PIPELINE_DIR}")
            save_card(storage.local_path(staging), card)
            if self.drift_profile is not None:
                from sparkvision.drift.stats import save_profile

                save_profile(storage.local_path(staging), self.drift_profile)
            if onnx:
                _add_onnx(spark, storage.local_path(staging), self.pipeline)
        log.info("saved model to %s", out_path)
        return out_path


def _add_onnx(spark: SparkSession, model_dir: str, pipeline: PipelineModel) -> None:
    """``model.onnx`` in a fresh fit model directory, or the reason in its card why there is none."""
    from sparkvision.deploy.export import NOT_EXPORTED, NotExportableError, export_pipeline
    from sparkvision.models.model_dir import load_card, save_card

    try:
        export_pipeline(spark, model_dir, pipeline)
    except NotExportableError as exc:
        log.info("no model.onnx: %s", exc)
        card = load_card(model_dir)
        card.provenance = {**card.provenance, NOT_EXPORTED: str(exc)}
        save_card(model_dir, card)


def featurized(featurizer: ImageFeaturizer, frame: DataFrame) -> DataFrame:
    """Training rows as (label, features), computed once and kept (memory, then disk)."""
    rows = (
        featurizer.transform(frame.select(PATH, LABEL, CONTENT, ERROR))
        .where(F.col(ERROR).isNull() & F.col(LABEL).isNotNull())
        .select(LABEL, FEATURES)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    return rows


def _featurizer(settings: TransferSettings) -> ImageFeaturizer:
    return ImageFeaturizer(modelName=settings.model_name, output=settings.output, batchSize=settings.batch_size,
                           tta=settings.tta)


@dataclass
class BackboneFeatures:
    """One backbone's features of the train and val rows, computed once and shared by the heads fitted on
    them: ``fit --auto`` featurizes an EfficientNet-Lite ``_stages`` variant and slices its plain network's
    features from it (:attr:`~sparkvision.models.registry.ModelSpec.contains_features_of`)."""

    #: (label, features) of the usable training rows, as :func:`featurized` keeps them.
    train: DataFrame
    #: The val rows with ``features`` and ``error`` set by the featurizer, their bytes replaced by their length.
    val: DataFrame | None
    #: Seconds the featurizer took on the train rows (what :func:`fit_transfer` reports as ``featurize_seconds``).
    seconds: float = 0.0

    @classmethod
    def compute(cls, train: DataFrame, val: DataFrame | None, settings: TransferSettings) -> BackboneFeatures:
        """Run ``settings.model_name`` once on every train and val row; the results kept (memory, then disk)."""
        from sparkvision.drift.spark import BYTES

        featurizer = _featurizer(settings)
        settings.check_feature_count(featurizer.num_features())
        started = time.perf_counter()
        features = cls(featurized(featurizer, train), None)
        try:
            features.train.count()
            features.seconds = time.perf_counter() - started
            if val is not None:
                features.val = featurizer.transform(val).withColumn(BYTES, F.length(CONTENT)).drop(CONTENT) \
                    .persist(StorageLevel.MEMORY_AND_DISK)
                features.val.count()
        except BaseException:
            features.unpersist()
            raise
        return features

    def last_columns(self, count: int) -> BackboneFeatures:
        """The same rows with only the last ``count`` values of each vector (a null vector stays null); no
        featurizing time of its own."""
        def cut(frame: DataFrame | None) -> DataFrame | None:
            if frame is None:
                return None
            vector = F.col(FEATURES)  # null on a row whose image did not decode; vector_to_array refuses nulls
            return frame.withColumn(FEATURES, F.when(vector.isNotNull(), array_to_vector(
                F.slice(vector_to_array(vector), -count, count))))

        return BackboneFeatures(cut(self.train), cut(self.val))  # type: ignore[arg-type]

    def unpersist(self) -> None:
        for frame in (self.train, self.val):
            if frame is not None:
                frame.unpersist()


def fit_transfer(
    train: DataFrame,
    val: DataFrame | None = None,
    settings: TransferSettings | None = None,
    provenance: dict[str, Any] | None = None,
    features: BackboneFeatures | None = None,
) -> TransferModel:
    """Fit featurizer + StringIndexer + classifier on ``train`` (IMAGE_SCHEMA rows with labels).

    Rows with errors or without a label are left out of training (their count is
    logged and recorded). The classifier's parameters are chosen by k-fold cross-validation
    on the cached features (by default for logistic regression, with ``settings.grid`` for
    every classifier; see :func:`fit_head`). With ``val``, the returned
    model's ``metrics`` are its validation metrics. ``features``: ``settings.model_name``'s
    features of these train and val rows, already computed (the backbone then does not run here).
    """
    settings = settings or TransferSettings()
    if features is not None and settings.int8:
        raise ValueError("int8 calibrates and validates the quantised backbone on the images: "
                         "it cannot start from computed features")
    started = time.perf_counter()
    featurizer = _featurizer(settings)
    source = featurizer.model_source()
    num_features = featurizer.num_features()
    settings.check_feature_count(num_features)  # before the backbone runs on every image
    featurize_started = time.perf_counter()
    train_features = featurized(featurizer, train) if features is None else features.train
    try:
        counts = {r[LABEL]: int(r["count"]) for r in train_features.groupBy(LABEL).count().collect()}
        # that first action ran the CNN on every row, unless the features came computed
        featurize_seconds = time.perf_counter() - featurize_started if features is None else features.seconds
        total_rows = train.count()
        used = sum(counts.values())
        if len(counts) < 2:
            raise ValueError(f"training needs at least 2 classes with usable images, found {sorted(counts)}")
        log.info("featurized %d training images of %d classes (%d rows left out: errors or no label)",
                 used, len(counts), total_rows - used)
        # "error" while training: with "keep" the label metadata gains an extra slot and
        # the classifier would score len(labels) + 1 classes. The pipeline gets a "keep"
        # copy, so unseen or missing labels at prediction time are not fatal.
        indexer = StringIndexer(
            inputCol=LABEL, outputCol=LABEL_INDEX, stringOrderType="alphabetAsc", handleInvalid="error"
        ).fit(train_features)
        labels = list(indexer.labels)
        filler = NullVectorFiller(inputCol=FEATURES, outputCol=FEATURES_FILLED, size=num_features)
        filled = filler.transform(indexer.transform(train_features))
        pca = fit_pca(filled, settings.pca) if settings.pca else None
        if pca is not None:
            filled = pca.transform(filled)
        prepared = filled.select(head_input(settings), LABEL_INDEX).persist(StorageLevel.MEMORY_AND_DISK)
        head_started = time.perf_counter()
        try:
            head = fit_head(prepared, settings, settings.pca or num_features, len(labels))
        finally:
            prepared.unpersist()
        head_seconds = time.perf_counter() - head_started
        classifier_model, grid_results = head.model, head.grid_results
    finally:
        if features is None:
            train_features.unpersist()
    stages = [
        featurizer,
        filler,
        *([pca] if pca is not None else []),
        indexer.copy({indexer.handleInvalid: "keep"}),
        classifier_model,
        IndexToString(inputCol=PREDICTION_INDEX, outputCol=PREDICTED_LABEL, labels=labels),
        PredictionFormatter(
            sourceCol=OVR_RAW_PREDICTION if settings.classifier == "gbt" else PROBABILITY_VECTOR,
            probabilityMode="ovr_margin" if settings.classifier == "gbt" else "vector",
        ),
    ]
    pipeline = PipelineModel(stages=stages)
    int8 = None
    if settings.int8:
        if val is None:
            raise ValueError("int8 needs validation images to guard its accuracy against fp32")
        pipeline, int8 = choose_precision(pipeline, train, val, labels, settings.int8_max_drop, settings.seed,
                                          (provenance or {}).get("val_source", "validation images"))
    classifier_params = _describe_params(classifier_model, settings.classifier)
    model = TransferModel(
        pipeline=pipeline, labels=labels, preprocess=source.preprocess, settings=settings,
        classifier_params=classifier_params, featurizer=featurizer, grid_results=grid_results,
        provenance={
            **(provenance or {}),
            "backbone": settings.model_name,
            "backbone_output": settings.output,
            "backbone_digest": source.digest,
            **_backbone_file(settings.model_name),
            **({"pca": pca_summary(pca, num_features)} if pca is not None else {}),
            "classifier": settings.classifier,
            "classifier_params": classifier_params,
            "grid": grid_results,
            **({"model_selection": head.selection} if head.selection else {}),
            "seed": settings.seed,
            "train_rows": counts,
            "featurize_seconds": round(featurize_seconds, 2),
            "head_seconds": round(head_seconds, 2),
            "settings": _plain(asdict(settings)),
        },
    )
    log.info("fitted %s in %.1f s", settings.classifier, time.perf_counter() - started)
    if int8 is not None:
        model.provenance["precision"] = int8.precision
    if val is not None:
        model.metrics, model.drift_profile = validate(model, val, (provenance or {}).get("val_source", "val"),
                                                      features.val if features is not None else None)
        if int8 is not None:
            model.metrics["int8"] = int8.to_dict()
        model.provenance["fit_seconds"] = round(time.perf_counter() - started, 1)
    return model


def choose_precision(pipeline: PipelineModel, train: DataFrame, val: DataFrame, labels: list[str], max_drop: float,
                     seed: int, val_source: str = "validation images") -> tuple[PipelineModel, Any]:
    """``fit --int8``: the pipeline with its featurizer quantised (calibrated on training images) if the
    int8 model's validation accuracy is within ``max_drop`` points of fp32's, else as it was; and the
    :class:`~sparkvision.deploy.int8.Int8Decision` with both figures (measured on the exported graphs)."""
    from sparkvision.config import MeasureSettings, QuantizeSettings
    from sparkvision.deploy.export import NotExportableError, append_head, pipeline_parts
    from sparkvision.deploy.int8 import judge, refused
    from sparkvision.deploy.measure import sample_rows, to_image_set

    try:
        parts = pipeline_parts(pipeline)
    except NotExportableError as exc:
        return pipeline, refused(f"the int8 guard measures the exported graph, and this head has none ({exc})",
                                 max_drop)
    featurizer = next(stage for stage in pipeline.stages if isinstance(stage, ImageFeaturizer))
    quantize = QuantizeSettings(seed=seed)
    int8 = featurizer.copy().calibrate(train, settings=quantize)
    rows = sample_rows(val, MeasureSettings().val_images, seed)
    val_set = to_image_set(rows, featurizer.model_source().preprocess, val_source)
    decision = judge(
        append_head(parts.backbone, parts.feature_output, parts.head).SerializeToString(),
        append_head(int8.model_source().data, parts.feature_output, parts.head).SerializeToString(),
        val_set, labels, int8.calibration_images, max_drop,
    )
    if not decision.accepted:
        return pipeline, decision
    return PipelineModel(stages=[int8 if stage is featurizer else stage for stage in pipeline.stages]), decision


def validate(model: TransferModel, val: DataFrame, source: str,
             val_features: DataFrame | None = None) -> tuple[dict[str, Any], Any]:
    """Validation metrics and the drift reference profile (:mod:`sparkvision.drift`) from one scoring of
    ``val``: the CNN runs once, its outputs cached without the image bytes. With ``val_features``
    (:attr:`BackboneFeatures.val`) the CNN does not run: the stages after the featurizer score them."""
    from sparkvision.drift.spark import BYTES, profile_frame
    from sparkvision.evaluation.metrics import PREDICTION_COLUMNS
    from sparkvision.io.schema import HEIGHT, MODE, WIDTH

    if val_features is None:
        scored = model.transform(val)
    else:
        featurizer, *after_featurizer = model.pipeline.stages
        if not isinstance(featurizer, ImageFeaturizer):
            raise ValueError(f"computed features need a pipeline that starts with its featurizer, not {featurizer}")
        scored = PipelineModel(stages=after_featurizer).transform(val_features)
    image = [F.col(c) for c in (WIDTH, HEIGHT, MODE, BYTES) if c in scored.columns]
    image += [F.length(CONTENT).alias(BYTES)] if CONTENT in scored.columns else []
    scored = scored.select(*PREDICTION_COLUMNS, FEATURES, *image).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        metrics = validation_metrics(scored, model.labels)
        profile = profile_frame(scored, model.labels, "features", source)
    finally:
        scored.unpersist()
    return metrics, profile


def fit_pca(filled: DataFrame, k: int) -> Model:
    """MLlib's PCA of the training features (``features_filled``), projecting onto ``k`` components.

    Its components come from the covariance of the rows (centred); its transform projects
    the vectors as they are (not centred), an offset the classifier's intercept absorbs.
    """
    started = time.perf_counter()
    model = PCA(k=k, inputCol=FEATURES_FILLED, outputCol=FEATURES_PCA).fit(filled)
    log.info("PCA: %d components keep %.1f %% of the features' variance (%.1f s)", k,
             100 * float(np.sum(model.explainedVariance.toArray())), time.perf_counter() - started)
    return model


def pca_summary(pca: Model, num_features: int) -> dict[str, Any]:
    """What the PCA stage is, for provenance and the model card."""
    return {"k": int(pca.getK()), "input_features": num_features,
            "explained_variance": round(float(np.sum(pca.explainedVariance.toArray())), 4)}


def _backbone_file(name: str) -> dict[str, str]:
    """Where a backbone registered from the user's ONNX file came from (the pipeline embeds its graph)."""
    from sparkvision.models import get_spec

    spec = get_spec(name)
    return {"backbone_file": spec.onnx_path} if spec.is_onnx and spec.onnx_path else {}


def read_fit_parts(
    spark: SparkSession,
    train_src: str,
    settings: TransferSettings,
    val_src: str | None = None,
    per_class: int | None = None,
    val_per_class: int | None = None,
    source_reader: Callable[[str], DataFrame] | None = None,
) -> tuple[DataFrame, DataFrame, dict[str, Any]]:
    """``fit``'s (train, val, provenance) frames: ``val_src``, else a stratified ``settings.val_fraction``
    of each class of ``train_src``; at most ``per_class`` / ``val_per_class`` images of each class."""
    from sparkvision.io import load_images
    from sparkvision.io.splits import SPLIT, assign_splits, sample_per_class

    read = source_reader or (lambda src: load_images(spark, src, probe="header"))
    frame = read(train_src)
    if per_class:
        frame = sample_per_class(frame, per_class, settings.seed)
    if val_src:
        train, val = frame, read(val_src)
        if val_per_class:
            val = sample_per_class(val, val_per_class, settings.seed)
        val_source = val_src
    else:
        assigned = assign_splits(frame, {"train": 1 - settings.val_fraction, "val": settings.val_fraction},
                                 seed=settings.seed)
        train = assigned.where(F.col(SPLIT) == "train").drop(SPLIT)
        val = assigned.where(F.col(SPLIT) == "val").drop(SPLIT)
        val_source = f"stratified {settings.val_fraction:.0%} of {train_src} (seed {settings.seed})"
    provenance: dict[str, Any] = {"train_source": train_src, "val_source": val_source}
    if per_class:
        provenance["train_per_class"] = per_class
    return train, val, provenance


def fit_from_sources(
    spark: SparkSession,
    train_src: str,
    out: str,
    settings: TransferSettings | None = None,
    val_src: str | None = None,
    per_class: int | None = None,
    val_per_class: int | None = None,
    overwrite: bool = False,
    source_reader: Callable[[str], DataFrame] | None = None,
) -> tuple[TransferModel, Path]:
    """``sparkvision fit``: read the sources, fit, and save the model directory at ``out``.

    Without ``val_src`` a stratified ``settings.val_fraction`` of each class is held out.
    ``per_class`` / ``val_per_class`` keep at most that many images of each class (a seeded
    choice). ``source_reader`` reads a source (default: :func:`sparkvision.io.load_images`
    with header probing); the CLI passes one that applies its source options.
    """
    from sparkvision.progress import spark_progress

    settings = settings or TransferSettings()
    train, val, provenance = read_fit_parts(spark, train_src, settings, val_src, per_class, val_per_class,
                                            source_reader)
    with spark_progress(spark, "fit"):
        model = fit_transfer(train, val, settings, provenance=provenance)
    return model, model.save(out, overwrite=overwrite)


def _plain(value: Any) -> Any:
    """JSON-able values for provenance (tuples to lists, Spark estimators to their params)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Params):
        return {p.name: _plain(v) for p, v in value.extractParamMap().items()
                if p.name in ("maxIter", "maxDepth", "seed")}
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------- validation metrics


def validation_metrics(predictions: DataFrame, labels: list[str]) -> dict[str, Any]:
    """All of :func:`sparkvision.evaluation.evaluate_predictions` (one Spark pass), as metrics.json holds it."""
    from sparkvision.evaluation.metrics import PREDICTION_COLUMNS, evaluate_predictions

    return evaluate_predictions(predictions.select(*PREDICTION_COLUMNS), labels).to_dict()
