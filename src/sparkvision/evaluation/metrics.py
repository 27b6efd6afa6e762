"""Classification metrics computed by Spark, so any number of predictions can be judged.

The input is a predictions DataFrame (``path``, ``label``, ``prediction``,
``probability`` array<double> in the model's label order, ``error``). Rows never come
to the driver: one pass over the data (a ``groupingSets`` aggregation,
:func:`count_predictions`) returns :class:`PredictionCounts`:

* counts per (true label, predicted label) cell: the confusion matrix, from which
  accuracy, per-class precision/recall/F1/support, macro and weighted averages and
  balanced accuracy follow;
* per confidence bin and row status: counts, summed confidence, correct predictions,
  top-k hits and summed log loss terms: top-k accuracy, log loss, calibration.

So the driver holds at most (classes x classes) + (bins x statuses) numbers,
whatever the number of rows. :func:`metrics_from_counts` turns them into every metric
with numpy alone; :func:`evaluate_predictions` does both. Only the counting needs
pyspark, and imports it when called.

Which rows count
----------------
* ``error`` not null: counted in ``error_rows`` (and by kind, the text before the
  first ``:``); excluded from every metric.
* no error but no true ``label``: counted in ``unlabeled_rows``; excluded.
* no error, a label, but no ``prediction`` (a broken producer): ``invalid_rows``; excluded.
* everything else is *evaluated*. Probability-based metrics (top-k, log loss,
  calibration) use the evaluated rows whose ``probability`` has one finite value per
  model label; the others are counted in ``missing_probability_rows``.

``rows == evaluated_rows + error_rows + unlabeled_rows + invalid_rows`` always holds.

Agreement with scikit-learn
---------------------------
* Classes of the per-class table, the confusion matrix and the averages are, as in
  ``sklearn.metrics.unique_labels``, the sorted union of the true and predicted labels
  of the evaluated rows. A class never predicted gets precision 0 (``zero_division=0``,
  which is what scikit-learn's default ``"warn"`` returns); a class only predicted
  (no true rows) gets recall 0, support 0, and weight 0 in the weighted average.
* Labels unseen in training (true labels not in the model's label list) are classes
  like any other in those metrics: they can never be predicted, so their recall is 0
  and every such row is an error of accuracy, as ``accuracy_score`` and
  ``precision_recall_fscore_support`` treat them. ``balanced_accuracy_score`` averages
  recall over the classes that have true rows, unseen ones included (recall 0).
* ``top_k_accuracy_score`` and ``log_loss`` refuse true labels outside ``labels``.
  Here top-k counts such rows as misses (a model cannot rank a class it does not
  know), so top-1 and accuracy stay comparable; log loss, which would be infinite,
  is averaged over the rows whose label the model knows (``log_loss_rows`` says how
  many). Probabilities are clipped to [eps, 1 - eps] (float64 eps) as scikit-learn does.
* Ties in top-k are broken as scikit-learn does: among equal scores the label with the
  higher index (in the model's label order) ranks first.

Expected calibration error
--------------------------
Confidence is the largest probability of a row, correctness is ``prediction ==
label``. ``calibration_bins`` (default 15) equal-width bins over [0, 1], closed on the
right: bin ``b`` holds confidences in ``(b/B, (b+1)/B]``, and a confidence of exactly 0
goes to the first bin. ECE = sum over bins of ``n_b / n * |accuracy_b - confidence_b|``
(Guo et al. 2017). Rows with unseen labels are included: they are confidently wrong.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sparkvision.config import EvaluationSettings

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("path", "label", "prediction", "probability", "error")
#: scikit-learn clips probabilities to [eps, 1 - eps] with the dtype's machine epsilon.
EPS = float(np.finfo(np.float64).eps)

OK, ERROR, UNLABELED, INVALID = "ok", "error", "unlabeled", "invalid"


@dataclass
class ClassMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    #: True rows of this class.
    support: int
    #: Rows predicted as this class.
    predicted: int
    #: Whether the model knows this label (False: unseen in training; None: model labels not given).
    in_model: bool | None


@dataclass
class CalibrationBin:
    lower: float
    upper: float
    count: int
    #: Mean confidence and accuracy of the rows in the bin (None when empty).
    confidence: float | None
    accuracy: float | None


@dataclass
class Averages:
    precision: float
    recall: float
    f1: float


@dataclass
class EvaluationResult:
    """Everything ``evaluate`` measures; ``to_dict`` is what metrics.json holds."""

    rows: int
    evaluated_rows: int
    error_rows: int
    unlabeled_rows: int
    invalid_rows: int
    error_kinds: dict[str, int]
    accuracy: float | None
    balanced_accuracy: float | None
    macro: Averages | None
    weighted: Averages | None
    per_class: list[ClassMetrics]
    #: Rows are true labels, columns predicted labels, both in ``confusion_labels`` order.
    confusion_labels: list[str]
    confusion_matrix: list[list[int]]
    #: The model's labels (probability order); empty when unknown.
    model_labels: list[str] = field(default_factory=list)
    top_k: dict[int, float | None] = field(default_factory=dict)
    probability_rows: int = 0
    missing_probability_rows: int = 0
    log_loss: float | None = None
    log_loss_rows: int = 0
    ece: float | None = None
    calibration: list[CalibrationBin] = field(default_factory=list)
    #: Evaluated rows whose true label is not among the model's labels.
    unseen_label_rows: int = 0
    unseen_labels: list[str] = field(default_factory=list)
    never_predicted: list[str] = field(default_factory=list)
    #: Rows whose ``prediction`` is not the most probable label: a sign that
    #: ``model_labels`` is not the order the probabilities were written in.
    argmax_mismatch_rows: int = 0
    #: Where the numbers came from (predictions path, model directory, ...).
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["top_k"] = {str(k): v for k, v in self.top_k.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        data = dict(data)
        data["macro"] = Averages(**data["macro"]) if data.get("macro") else None
        data["weighted"] = Averages(**data["weighted"]) if data.get("weighted") else None
        data["per_class"] = [ClassMetrics(**c) for c in data.get("per_class", [])]
        data["calibration"] = [CalibrationBin(**b) for b in data.get("calibration", [])]
        data["top_k"] = {int(k): v for k, v in data.get("top_k", {}).items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary(self) -> dict[str, Any]:
        """The headline numbers (what ``compare`` lines up)."""
        out: dict[str, Any] = {
            "rows": self.rows,
            "evaluated_rows": self.evaluated_rows,
            "error_rows": self.error_rows,
            "unlabeled_rows": self.unlabeled_rows,
            "accuracy": self.accuracy,
        }
        for k, value in sorted(self.top_k.items()):
            out[f"top{k}_accuracy"] = value
        out.update({
            "balanced_accuracy": self.balanced_accuracy,
            "macro_precision": self.macro.precision if self.macro else None,
            "macro_recall": self.macro.recall if self.macro else None,
            "macro_f1": self.macro.f1 if self.macro else None,
            "weighted_f1": self.weighted.f1 if self.weighted else None,
            "log_loss": self.log_loss,
            "ece": self.ece,
        })
        return out


def _status(label: Column, prediction: Column, error: Column) -> Column:
    from pyspark.sql import functions as F

    return (
        F.when(error.isNotNull(), F.lit(ERROR))
        .when(label.isNull(), F.lit(UNLABELED))
        .when(prediction.isNull(), F.lit(INVALID))
        .otherwise(F.lit(OK))
    )


def _annotate(frame: DataFrame, labels: Sequence[str], ks: Sequence[int], bins: int) -> DataFrame:
    """Per-row columns that the one aggregation sums: status, bin, correctness, top-k hits, loss."""
    from pyspark.sql import functions as F

    label, prediction, error, prob = F.col("label"), F.col("prediction"), F.col("error"), F.col("probability")
    status = _status(label, prediction, error)
    ok = status == F.lit(OK)
    n_labels = len(labels)
    if n_labels:
        label_array = F.array(*[F.lit(name) for name in labels])
        valid = (
            ok
            & prob.isNotNull()
            & (F.size(prob) == F.lit(n_labels))
            & ~F.exists(prob, lambda x: x.isNull() | F.isnan(x))
        )
        true_index = F.array_position(label_array, label)  # 1-based, 0 when unseen
        pred_index = F.array_position(label_array, prediction)
    else:
        valid = F.lit(False)
        true_index = pred_index = F.lit(0)
    frame = frame.select(
        status.alias("_status"),
        F.when(status == F.lit(ERROR), F.trim(F.substring_index(error, ":", 1))).alias("_kind"),
        F.when(ok, label).alias("_label"),
        F.when(ok, prediction).alias("_prediction"),
        valid.alias("_valid"),
        F.when(ok, true_index).alias("_ti"),
        F.when(ok, pred_index).alias("_pi"),
        prob.alias("_prob"),
    )
    ti = F.col("_ti")
    valid = F.col("_valid")
    known = valid & (ti > 0)
    # try_element_at: never an ANSI out-of-bounds error, whatever the optimiser evaluates first.
    p_true = F.when(known, F.try_element_at(F.col("_prob"), ti.cast("int")))
    confidence = F.when(valid, F.array_max(F.col("_prob")))
    frame = frame.withColumns({"_ptrue": p_true, "_conf": confidence})
    # sklearn's order: argsort(kind="mergesort")[:, ::-1], i.e. a tie goes to the higher index.
    rank = F.size(
        F.filter(
            F.col("_prob"),
            lambda x, i: (x > F.col("_ptrue")) | ((x == F.col("_ptrue")) & (i > ti - 1)),
        )
    )
    columns: dict[str, Column] = {
        "_correct": F.when(F.col("_status") == F.lit(OK), (F.col("_label") == F.col("_prediction")).cast("long")),
        "_bin": F.when(valid, F.greatest(F.lit(0), F.least(F.lit(bins - 1), F.ceil(F.col("_conf") * bins) - 1))),
        "_logloss": F.when(known, -F.log(F.least(F.greatest(F.col("_ptrue"), F.lit(EPS)), F.lit(1.0 - EPS)))),
        "_mismatch": F.when(
            valid,
            F.when(
                F.col("_pi") > 0,
                (F.try_element_at(F.col("_prob"), F.col("_pi").cast("int")) < F.col("_conf")),
            ).otherwise(F.lit(True)).cast("long"),
        ),
    }
    for k in ks:
        columns[f"_top{k}"] = F.when(valid, F.when(known & (rank < k), 1).otherwise(0))
    return frame.withColumns(columns).drop("_prob")


def normalize_predictions(frame: DataFrame) -> DataFrame:
    """The predictions schema with the types metrics expect, whatever close variant came in.

    Labels are compared as strings; ``probability`` may also arrive as array<float> or as
    an MLlib vector (a classifier's raw ``probability`` column) and becomes array<double>.
    """
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType

    missing = [c for c in ("label", "prediction", "error") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"predictions need the columns {', '.join(PREDICTION_COLUMNS)}; missing {', '.join(missing)} "
            f"(found {', '.join(frame.columns)})"
        )
    if "probability" in frame.columns:
        dtype = frame.schema["probability"].dataType
        if isinstance(dtype, VectorUDT):
            from pyspark.ml.functions import vector_to_array

            # vector_to_array refuses nulls, and error rows have none.
            probability = F.when(F.col("probability").isNotNull(), vector_to_array(F.col("probability"), "float64"))
        elif isinstance(dtype, ArrayType):
            probability = F.col("probability").cast("array<double>")
        else:
            raise ValueError(f"probability must be array<double> (or an MLlib vector), got {dtype.simpleString()}")
    else:
        probability = F.lit(None).cast("array<double>")
    path = F.col("path").cast("string") if "path" in frame.columns else F.lit(None).cast("string")
    return frame.select(
        path.alias("path"),
        F.col("label").cast("string").alias("label"),
        F.col("prediction").cast("string").alias("prediction"),
        probability.alias("probability"),
        F.col("error").cast("string").alias("error"),
    )


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


@dataclass
class PredictionCounts:
    """What one pass over a predictions table counts; every metric follows from these.

    Its size depends on the classes and bins, never on the rows: (classes x classes)
    confusion cells, one entry per k and three per calibration bin. Counts of two
    tables add up to the counts of both.
    """

    #: The model's labels (the probability order); empty when unknown.
    model_labels: list[str]
    #: Rows per status: ``ok`` (evaluated), ``error``, ``unlabeled``, ``invalid``.
    status: dict[str, int]
    #: Error rows per kind (the text of ``error`` before the first ``:``).
    error_kinds: dict[str, int]
    #: Evaluated rows per (true label, predicted label).
    confusion: dict[tuple[str, str], int]
    #: Evaluated rows whose probability vector has one finite value per model label;
    #: the probability-based counts below are over these rows.
    probability_rows: int = 0
    #: Rows whose true label is among the k most probable, per k.
    top_k_hits: dict[int, int] = field(default_factory=dict)
    #: Sum of ``-log(clip(p_true))`` over the rows whose label the model knows, and how many.
    log_loss_sum: float = 0.0
    log_loss_rows: int = 0
    #: Rows whose prediction is not their most probable label.
    argmax_mismatch_rows: int = 0
    #: Per confidence bin (equal width over [0, 1], closed on the right): rows, summed
    #: confidence, correct predictions.
    bin_rows: list[int] = field(default_factory=list)
    bin_confidence: list[float] = field(default_factory=list)
    bin_correct: list[int] = field(default_factory=list)


def _top_ks(top_k: int | Sequence[int] | None, settings: EvaluationSettings) -> list[int]:
    if top_k is None:
        ks = sorted({1, int(settings.top_k)})
    elif isinstance(top_k, int):
        ks = sorted({1, top_k})
    else:
        ks = sorted({1, *map(int, top_k)})
    if any(k < 1 for k in ks):
        raise ValueError(f"top-k needs k >= 1, got {ks}")
    return ks


def evaluate_predictions(
    predictions: DataFrame,
    labels: Sequence[str] | None = None,
    top_k: int | Sequence[int] | None = None,
    settings: EvaluationSettings | None = None,
) -> EvaluationResult:
    """All metrics of ``predictions`` in one Spark pass.

    ``labels`` is the model's label list, the order of every ``probability`` vector
    (the model card's ``labels``). Without it only the metrics that need no
    probabilities are computed.
    """
    settings = settings or EvaluationSettings()
    return metrics_from_counts(count_predictions(predictions, labels, _top_ks(top_k, settings),
                                                 int(settings.calibration_bins)))


def count_predictions(predictions: DataFrame, labels: Sequence[str] | None, top_k: Sequence[int],
                      bins: int) -> PredictionCounts:
    """The :class:`PredictionCounts` of ``predictions``: one ``groupingSets`` aggregation."""
    from pyspark.sql import functions as F

    has_probability = "probability" in predictions.columns
    predictions = normalize_predictions(predictions)
    labels = list(labels or [])
    if len(set(labels)) != len(labels):
        raise ValueError("model labels must be unique (they index the probability vector)")
    if bins < 1:
        raise ValueError(f"calibration_bins must be >= 1, got {bins}")
    ks = sorted(set(top_k))
    annotated = _annotate(predictions, labels if has_probability else [], ks, bins)
    grouped = annotated.groupingSets(
        [["_label", "_prediction"], ["_status", "_kind", "_bin"]],
        "_label", "_prediction", "_status", "_kind", "_bin",
    ).agg(
        F.grouping_id().alias("_gid"),
        F.count(F.lit(1)).alias("n"),
        F.sum(F.col("_valid").cast("long")).alias("valid"),
        F.sum("_correct").alias("correct"),
        F.sum("_conf").alias("conf"),
        F.sum("_logloss").alias("logloss"),
        F.count("_logloss").alias("logloss_n"),
        F.sum("_mismatch").alias("mismatch"),
        *[F.sum(f"_top{k}").alias(f"top{k}") for k in ks],
    )
    cells = grouped.collect()  # bounded: (labels x predictions) + (statuses x kinds x bins) rows

    # grouping_id bit order follows the grouping columns: _label, _prediction, _status, _kind, _bin.
    # The (label, prediction) grouping set also yields one cell for all non-ok rows (both null): dropped.
    confusion = {(r["_label"], r["_prediction"]): int(r["n"]) for r in cells
                 if r["_gid"] == 0b00111 and r["_label"] is not None}
    status_cells = [r for r in cells if r["_gid"] == 0b11000]
    status = {OK: 0, ERROR: 0, UNLABELED: 0, INVALID: 0}
    error_kinds: dict[str, int] = {}
    for r in status_cells:
        status[r["_status"]] += r["n"]
        if r["_status"] == ERROR:
            kind = r["_kind"] or "error"
            error_kinds[kind] = error_kinds.get(kind, 0) + r["n"]
    ok_cells = [r for r in status_cells if r["_status"] == OK]
    per_bin = {r["_bin"]: r for r in ok_cells if r["_bin"] is not None}

    def total(name: str) -> int:
        return sum(int(r[name] or 0) for r in ok_cells)

    return PredictionCounts(
        model_labels=labels,
        status=status,
        error_kinds=error_kinds,
        confusion=confusion,
        probability_rows=total("valid"),
        top_k_hits={k: total(f"top{k}") for k in ks},
        log_loss_sum=sum(float(r["logloss"] or 0.0) for r in ok_cells),
        log_loss_rows=total("logloss_n"),
        argmax_mismatch_rows=total("mismatch"),
        bin_rows=[int(per_bin[b]["n"]) if b in per_bin else 0 for b in range(bins)],
        bin_confidence=[float(per_bin[b]["conf"]) if b in per_bin else 0.0 for b in range(bins)],
        bin_correct=[int(per_bin[b]["correct"]) if b in per_bin else 0 for b in range(bins)],
    )


def metrics_from_counts(counts: PredictionCounts) -> EvaluationResult:
    """Every metric of :class:`EvaluationResult` from the counts (numpy; no Spark)."""
    labels = list(counts.model_labels)
    classes = sorted({t for t, _ in counts.confusion} | {p for _, p in counts.confusion})
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for (true, pred), n in counts.confusion.items():
        matrix[index[true], index[pred]] += n

    evaluated = int(matrix.sum())
    if evaluated != counts.status.get(OK, 0):
        raise RuntimeError(f"confusion matrix holds {evaluated} rows but {counts.status.get(OK, 0)} were evaluated")
    model_set = set(labels)
    tp = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    per_class: list[ClassMetrics] = []
    for i, name in enumerate(classes):
        precision = _safe_div(tp[i], predicted[i])
        recall = _safe_div(tp[i], support[i])
        f1 = _safe_div(2 * tp[i], support[i] + predicted[i])
        per_class.append(
            ClassMetrics(name, precision, recall, f1, int(support[i]), int(predicted[i]),
                         (name in model_set) if labels else None)
        )

    if evaluated:
        accuracy: float | None = float(tp.sum() / evaluated)
        precisions = np.array([c.precision for c in per_class])
        recalls = np.array([c.recall for c in per_class])
        f1s = np.array([c.f1 for c in per_class])
        macro: Averages | None = Averages(float(precisions.mean()), float(recalls.mean()), float(f1s.mean()))
        weights = support / support.sum()
        weighted: Averages | None = Averages(
            float((precisions * weights).sum()), float((recalls * weights).sum()), float((f1s * weights).sum())
        )
        present = support > 0
        balanced: float | None = float(recalls[present].mean())
    else:
        accuracy = balanced = None
        macro = weighted = None

    valid_rows = counts.probability_rows
    top_k_values: dict[int, float | None] = {
        k: (hits / valid_rows if valid_rows else None) for k, hits in sorted(counts.top_k_hits.items())
    }
    logloss = counts.log_loss_sum / counts.log_loss_rows if counts.log_loss_rows else None

    calibration: list[CalibrationBin] = []
    ece = 0.0
    bins = len(counts.bin_rows)
    for b, (n, conf_sum, correct) in enumerate(zip(counts.bin_rows, counts.bin_confidence, counts.bin_correct,
                                                   strict=True)):
        conf = conf_sum / n if n else None
        acc = correct / n if n else None
        calibration.append(CalibrationBin(b / bins, (b + 1) / bins, n, conf, acc))
        if n:
            ece += n / valid_rows * abs(acc - conf)  # type: ignore[operator]

    unseen = sorted(c for c in classes if labels and c not in model_set and support[index[c]] > 0)
    never_predicted = sorted(
        c for c in (labels or classes) if (c not in index or predicted[index[c]] == 0)
    )
    mismatch = counts.argmax_mismatch_rows
    if mismatch:
        log.warning(
            "%d of %d rows predict a label that is not their most probable one: are the model labels "
            "in the order the probabilities were written?", mismatch, valid_rows,
        )
    if labels and not valid_rows and evaluated:
        log.warning("no evaluated row has a probability vector of %d values: probability metrics skipped", len(labels))
    return EvaluationResult(
        rows=sum(counts.status.values()),
        evaluated_rows=evaluated,
        error_rows=counts.status.get(ERROR, 0),
        unlabeled_rows=counts.status.get(UNLABELED, 0),
        invalid_rows=counts.status.get(INVALID, 0),
        error_kinds=dict(sorted(counts.error_kinds.items())),
        accuracy=accuracy,
        balanced_accuracy=balanced,
        macro=macro,
        weighted=weighted,
        per_class=per_class,
        confusion_labels=classes,
        confusion_matrix=matrix.tolist(),
        model_labels=labels,
        top_k=top_k_values,
        probability_rows=valid_rows,
        missing_probability_rows=evaluated - valid_rows,
        log_loss=logloss,
        log_loss_rows=counts.log_loss_rows,
        ece=ece if valid_rows else None,
        calibration=calibration if valid_rows else [],
        unseen_label_rows=int(sum(support[index[c]] for c in unseen)),
        unseen_labels=unseen,
        never_predicted=never_predicted,
        argmax_mismatch_rows=mismatch,
    )


def most_confidently_wrong(predictions: DataFrame, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` wrong predictions with the highest confidence (Spark's top-N, not a full sort on the driver)."""
    from pyspark.sql import functions as F

    predictions = normalize_predictions(predictions)
    status = _status(F.col("label"), F.col("prediction"), F.col("error"))
    wrong = predictions.where((status == F.lit(OK)) & (F.col("label") != F.col("prediction")))
    confidence = F.when(F.size("probability") > 0, F.array_max("probability"))
    rows = (
        wrong.select("path", "label", "prediction", confidence.alias("confidence"))
        .orderBy(F.col("confidence").desc_nulls_last(), F.col("path"))
        .limit(int(limit))
        .collect()
    )
    return [
        {
            "path": r["path"], "label": r["label"], "prediction": r["prediction"],
            "confidence": None if r["confidence"] is None or math.isnan(r["confidence"]) else float(r["confidence"]),
        }
        for r in rows
    ]
