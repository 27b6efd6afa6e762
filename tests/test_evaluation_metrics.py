"""Classification metrics against scikit-learn on the same rows, edge cases included.

Most tests give :func:`metrics_from_counts` counts made with scikit-learn and numpy from
the rows, and compare every metric with scikit-learn's own: no Spark. The Spark tests
check that one aggregation pass (:func:`count_predictions`) counts the same, row kinds,
ties and clipping included.
"""

from __future__ import annotations

import json
import logging
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from sparkvision.config import EvaluationSettings
from sparkvision.evaluation.metrics import (
    EvaluationResult,
    PredictionCounts,
    count_predictions,
    evaluate_predictions,
    metrics_from_counts,
    most_confidently_wrong,
)

PREDICTION_SCHEMA = "path string, label string, prediction string, probability array<double>, error string"
#: Deliberately not sorted: the probability order is the model's, not alphabetical.
MODEL_LABELS = ["dog", "cat", "bird", "fish", "ant", "eel"]
KS = [1, 2, 3]
BINS = 10


@pytest.fixture(scope="module")
def case():
    """600 scored rows, plus every other kind of row.

    - "fish" is never predicted (its probability column is scaled down);
    - "zebra" is a true label the model never saw;
    - "eel" is a model label with no true rows, but it is predicted (recall undefined);
    - plus error rows, unlabeled rows and one row without a prediction.
    """
    rng = np.random.default_rng(7)
    n = 600
    true_pool = ["dog", "cat", "bird", "fish", "ant", "zebra"]
    y_true = rng.choice(true_pool, size=n, p=[0.25, 0.2, 0.2, 0.15, 0.15, 0.05])
    logits = rng.normal(size=(n, len(MODEL_LABELS)))
    for i, name in enumerate(y_true):
        if name in MODEL_LABELS:
            logits[i, MODEL_LABELS.index(name)] += 1.5  # a model better than chance
    logits[:, MODEL_LABELS.index("fish")] -= 8.0  # fish never wins
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_pred = np.array(MODEL_LABELS)[prob.argmax(axis=1)]
    assert "fish" not in set(y_pred) and "eel" in set(y_pred)
    rows = [(f"file:/img/{i}.jpg", y_true[i], y_pred[i], prob[i].tolist(), None) for i in range(n)]
    extra = [
        ("file:/img/bad1.jpg", "dog", None, None, "corrupt: header cannot be parsed"),
        ("file:/img/bad2.jpg", "cat", None, None, "corrupt: bad huffman table"),
        ("file:/img/bad3.jpg", None, None, None, "truncated: image file is truncated"),
        ("file:/img/new1.jpg", None, "dog", prob[0].tolist(), None),
        ("file:/img/new2.jpg", None, "cat", prob[1].tolist(), None),
        ("file:/img/odd.jpg", "dog", None, None, None),
    ]
    return {"rows": rows + extra, "y_true": y_true, "y_pred": y_pred, "prob": prob}


def _sorted_columns(prob: np.ndarray, labels: list[str]) -> tuple[list[str], np.ndarray]:
    """sklearn wants labels sorted and the score columns in that order."""
    order = sorted(labels)
    return order, prob[:, [labels.index(name) for name in order]]


def reference_counts(y_true: np.ndarray, y_pred: np.ndarray, prob: np.ndarray | None, labels: list[str],
                     ks: list[int] = KS, bins: int = BINS) -> PredictionCounts:
    """The counts of scored rows (all evaluated), made with scikit-learn and numpy."""
    classes = sorted(set(y_true) | set(y_pred))
    matrix = confusion_matrix(y_true, y_pred, labels=classes)
    counts = PredictionCounts(
        model_labels=labels, status={"ok": len(y_true), "error": 0, "unlabeled": 0, "invalid": 0}, error_kinds={},
        confusion={(t, p): int(matrix[i, j]) for i, t in enumerate(classes) for j, p in enumerate(classes)
                   if matrix[i, j]},
    )
    if prob is None:
        counts.top_k_hits = {k: 0 for k in ks}
        return counts
    known = np.isin(y_true, labels)
    order, sorted_prob = _sorted_columns(prob, labels)
    counts.probability_rows = len(y_true)
    # Rows of labels the model does not know are misses, and have no log-loss term.
    counts.top_k_hits = {k: int(top_k_accuracy_score(y_true[known], sorted_prob[known], k=k, labels=order,
                                                     normalize=False)) for k in ks}
    counts.log_loss_sum = float(log_loss(y_true[known], sorted_prob[known], labels=order, normalize=False))
    counts.log_loss_rows = int(known.sum())
    conf = prob.max(axis=1)
    in_bin = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    correct = y_true == y_pred
    counts.bin_rows = [int((in_bin == b).sum()) for b in range(bins)]
    counts.bin_confidence = [float(conf[in_bin == b].sum()) for b in range(bins)]
    counts.bin_correct = [int(correct[in_bin == b].sum()) for b in range(bins)]
    return counts


@pytest.fixture(scope="module")
def result(case) -> EvaluationResult:
    return metrics_from_counts(reference_counts(case["y_true"], case["y_pred"], case["prob"], MODEL_LABELS))


def test_label_metrics_match_sklearn(result, case):
    y_true, y_pred = case["y_true"], case["y_pred"]
    assert result.accuracy == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the class with no true rows
        assert result.balanced_accuracy == pytest.approx(balanced_accuracy_score(y_true, y_pred), abs=1e-12)
    classes = sorted(set(y_true) | set(y_pred))
    assert result.confusion_labels == classes
    np.testing.assert_array_equal(np.array(result.confusion_matrix), confusion_matrix(y_true, y_pred, labels=classes))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    got = {c.label: c for c in result.per_class}
    for i, name in enumerate(classes):
        assert got[name].precision == pytest.approx(p[i], abs=1e-12), name
        assert got[name].recall == pytest.approx(r[i], abs=1e-12), name
        assert got[name].f1 == pytest.approx(f[i], abs=1e-12), name
        assert got[name].support == s[i]
    for average, mine in (("macro", result.macro), ("weighted", result.weighted)):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        assert (mine.precision, mine.recall, mine.f1) == pytest.approx((p, r, f), abs=1e-12), average


def test_never_predicted_and_unseen_labels(result):
    got = {c.label: c for c in result.per_class}
    assert got["fish"].predicted == 0 and got["fish"].precision == 0.0 and got["fish"].support > 0
    assert got["zebra"].in_model is False and got["zebra"].recall == 0.0 and got["zebra"].support > 0
    assert got["eel"].support == 0 and got["eel"].recall == 0.0 and got["eel"].predicted > 0
    assert result.unseen_labels == ["zebra"] and result.unseen_label_rows == got["zebra"].support
    assert result.never_predicted == ["fish"]
    assert result.argmax_mismatch_rows == 0


def test_top_k_and_log_loss_match_sklearn(result, case):
    y_true, prob = case["y_true"], case["prob"]
    known = np.isin(y_true, MODEL_LABELS)
    order, sorted_prob = _sorted_columns(prob, MODEL_LABELS)
    for k in KS:
        expected = top_k_accuracy_score(y_true[known], sorted_prob[known], k=k, labels=order)
        # Unseen labels are misses: sklearn's value on known rows, diluted by all rows.
        assert result.top_k[k] == pytest.approx(expected * known.sum() / len(y_true), abs=1e-12), k
    assert result.top_k[1] == pytest.approx(result.accuracy, abs=1e-12)
    assert result.log_loss_rows == known.sum()
    assert result.log_loss == pytest.approx(log_loss(y_true[known], sorted_prob[known], labels=order), rel=1e-12)


def test_ece_hand_worked():
    # Five bins of width 0.2. Confidences and correctness:
    #   0.9 right, 0.95 wrong -> bin (0.8, 1.0]: accuracy 1/2, confidence 0.925, gap 0.425
    #   0.5 right             -> bin (0.4, 0.6]: accuracy 1,   confidence 0.5,   gap 0.5
    #   0.7 right, 0.65 right -> bin (0.6, 0.8]: accuracy 1,   confidence 0.675, gap 0.325
    # ECE = 2/5 * 0.425 + 1/5 * 0.5 + 2/5 * 0.325 = 0.17 + 0.1 + 0.13 = 0.4
    counts = PredictionCounts(
        model_labels=["a", "b"], status={"ok": 5}, error_kinds={},
        confusion={("a", "a"): 2, ("a", "b"): 1, ("b", "b"): 2}, probability_rows=5,
        bin_rows=[0, 0, 1, 2, 2], bin_confidence=[0, 0, 0.5, 1.35, 1.85], bin_correct=[0, 0, 1, 2, 1],
    )
    res = metrics_from_counts(counts)
    assert res.ece == pytest.approx(0.4, abs=1e-12)
    assert [b.count for b in res.calibration] == [0, 0, 1, 2, 2]
    assert [(b.lower, b.upper) for b in res.calibration][2] == pytest.approx((0.4, 0.6))
    assert res.calibration[4].accuracy == pytest.approx(0.5) and res.calibration[4].confidence == pytest.approx(0.925)
    assert res.calibration[0].accuracy is None


def test_ece_matches_numpy_reference(result, case):
    y_true, y_pred, prob = case["y_true"], case["y_pred"], case["prob"]
    conf = prob.max(axis=1)
    correct = (y_true == y_pred).astype(float)
    bins = np.clip(np.ceil(conf * BINS).astype(int) - 1, 0, BINS - 1)
    expected = sum(
        (bins == b).sum() / len(conf) * abs(correct[bins == b].mean() - conf[bins == b].mean())
        for b in range(BINS) if (bins == b).any()
    )
    assert result.ece == pytest.approx(expected, abs=1e-12)
    assert sum(b.count for b in result.calibration) == len(conf)


def test_without_probabilities_label_metrics_still_work(case):
    res = metrics_from_counts(reference_counts(case["y_true"], case["y_pred"], None, []))
    assert res.accuracy == pytest.approx(accuracy_score(case["y_true"], case["y_pred"]), abs=1e-12)
    assert res.log_loss is None and res.ece is None and res.calibration == []
    assert res.top_k == {1: None, 2: None, 3: None}
    assert res.missing_probability_rows == 600 and res.per_class[0].in_model is None


def test_row_accounting_and_warnings(case, caplog):
    counts = reference_counts(case["y_true"], case["y_pred"], case["prob"], MODEL_LABELS)
    counts.status.update(error=3, unlabeled=2, invalid=1)
    counts.error_kinds = {"truncated": 1, "corrupt": 2}
    counts.argmax_mismatch_rows = 7
    with caplog.at_level(logging.WARNING, logger="sparkvision.evaluation.metrics"):
        res = metrics_from_counts(counts)
    assert (res.rows, res.evaluated_rows, res.error_rows, res.unlabeled_rows, res.invalid_rows) == (606, 600, 3, 2, 1)
    assert list(res.error_kinds.items()) == [("corrupt", 2), ("truncated", 1)]
    assert res.argmax_mismatch_rows == 7 and "order the probabilities were written" in caplog.text
    counts.status["ok"] = 599
    with pytest.raises(RuntimeError, match="confusion matrix holds 600 rows but 599 were evaluated"):
        metrics_from_counts(counts)


def test_round_trips_through_json(result):
    again = EvaluationResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.to_dict() == result.to_dict()
    assert not any(isinstance(v, float) and math.isnan(v) for v in again.summary().values())


# -- the Spark pass ------------------------------------------------------------------------


def _frame(spark, rows: list[tuple]) -> object:
    return spark.createDataFrame(pd.DataFrame(rows, columns=["path", "label", "prediction", "probability", "error"]),
                                 schema=PREDICTION_SCHEMA)


def test_spark_counts_every_row_as_sklearn_does(spark, case, result):
    """Every kind of row is accounted for; the scored rows count as scikit-learn counts them,
    whether the probabilities arrive as doubles, floats or MLlib vectors."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    frame = _frame(spark, case["rows"])
    got = evaluate_predictions(frame, MODEL_LABELS, top_k=KS, settings=EvaluationSettings(calibration_bins=BINS))
    assert got.rows == len(case["rows"]) == got.evaluated_rows + got.error_rows + got.unlabeled_rows + got.invalid_rows
    assert (got.evaluated_rows, got.unlabeled_rows, got.invalid_rows) == (600, 2, 1)
    assert got.error_rows == 3 and got.error_kinds == {"corrupt": 2, "truncated": 1}
    assert got.probability_rows == 600 and got.missing_probability_rows == 0

    want = reference_counts(case["y_true"], case["y_pred"], case["prob"], MODEL_LABELS)
    as_float = frame.withColumn("probability", F.col("probability").cast("array<float>"))
    as_vector = frame.withColumn("probability", F.when(F.col("probability").isNotNull(),
                                                       array_to_vector("probability")))
    for variant, rel in ((frame, 1e-12), (as_vector, 1e-12), (as_float, 1e-6)):
        counts = count_predictions(variant, MODEL_LABELS, KS, BINS)
        assert counts.confusion == want.confusion and counts.log_loss_rows == want.log_loss_rows
        assert counts.log_loss_sum == pytest.approx(want.log_loss_sum, rel=rel)
        assert counts.argmax_mismatch_rows == 0
        if variant is not as_float:  # float32 rounding may move a confidence across a bin edge
            assert counts.top_k_hits == want.top_k_hits and counts.bin_rows == want.bin_rows
            assert counts.bin_correct == want.bin_correct
            assert counts.bin_confidence == pytest.approx(want.bin_confidence, rel=1e-12)
    assert got.to_dict() == metrics_from_counts(count_predictions(frame, MODEL_LABELS, KS, BINS)).to_dict()


def test_spark_ties_clipping_and_label_order(spark, caplog):
    """Top-k ties break as scikit-learn breaks them, zero probabilities are clipped as it
    clips them, and probabilities in another order than the labels are noticed."""
    labels = ["a", "b", "c", "d"]  # sorted, so sklearn can take the same columns
    prob = np.array([
        [0.25, 0.25, 0.25, 0.25],
        [0.4, 0.2, 0.2, 0.2],
        [0.1, 0.3, 0.3, 0.3],
        [0.3, 0.3, 0.2, 0.2],
        [0.5, 0.0, 0.5, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
    ])
    y_true = np.array(["a", "b", "d", "b", "a", "b", "b"])
    rows = [(f"p{i}", y_true[i], labels[int(prob[i].argmax())], prob[i].tolist(), None) for i in range(len(prob))]
    res = evaluate_predictions(_frame(spark, rows), labels, top_k=[1, 2, 3, 4])
    for k in (1, 2, 3, 4):
        assert res.top_k[k] == pytest.approx(top_k_accuracy_score(y_true, prob, k=k, labels=labels), abs=1e-12), k
    assert res.log_loss == pytest.approx(log_loss(y_true, prob, labels=labels), rel=1e-12)
    assert res.log_loss > 5  # the clipped zero dominates, finitely
    assert res.argmax_mismatch_rows == 0
    with caplog.at_level(logging.WARNING, logger="sparkvision.evaluation.metrics"):
        reversed_order = evaluate_predictions(_frame(spark, rows), list(reversed(labels)))
    assert reversed_order.argmax_mismatch_rows > 0 and "order" in caplog.text


def test_most_confidently_wrong_is_top_n(spark, case):
    top = most_confidently_wrong(_frame(spark, case["rows"]), 5)
    y_true, y_pred, prob = case["y_true"], case["y_pred"], case["prob"]
    wrong = np.flatnonzero(y_true != y_pred)
    expected = sorted(prob[wrong].max(axis=1), reverse=True)[:5]
    assert [t["confidence"] for t in top] == pytest.approx(expected, abs=1e-12)
    assert all(t["label"] != t["prediction"] for t in top)
