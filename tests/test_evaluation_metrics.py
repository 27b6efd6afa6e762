"""Spark metrics against scikit-learn on the same rows, edge cases included."""

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
from sparkvision.evaluation.metrics import EvaluationResult, evaluate_predictions, most_confidently_wrong

PREDICTION_SCHEMA = "path string, label string, prediction string, probability array<double>, error string"
#: Deliberately not sorted: the probability order is the model's, not alphabetical.
MODEL_LABELS = ["dog", "cat", "bird", "fish", "ant", "eel"]


def _frame(spark, rows: list[tuple]) -> object:
    return spark.createDataFrame(pd.DataFrame(rows, columns=["path", "label", "prediction", "probability", "error"]),
                                 schema=PREDICTION_SCHEMA)


@pytest.fixture(scope="module")
def case():
    """600 scored rows with every awkward kind of row mixed in.

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


@pytest.fixture(scope="module")
def result(spark, case) -> EvaluationResult:
    frame = _frame(spark, case["rows"])
    return evaluate_predictions(frame, MODEL_LABELS, top_k=[1, 2, 3], settings=EvaluationSettings(calibration_bins=10))


def test_every_row_is_accounted_for(result, case):
    assert result.rows == len(case["rows"])
    assert result.evaluated_rows == 600
    assert result.error_rows == 3 and result.error_kinds == {"corrupt": 2, "truncated": 1}
    assert result.unlabeled_rows == 2 and result.invalid_rows == 1
    assert result.rows == result.evaluated_rows + result.error_rows + result.unlabeled_rows + result.invalid_rows
    assert result.probability_rows == 600 and result.missing_probability_rows == 0


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


def _sorted_columns(prob: np.ndarray) -> tuple[list[str], np.ndarray]:
    """sklearn wants labels sorted and the score columns in that order."""
    order = sorted(MODEL_LABELS)
    return order, prob[:, [MODEL_LABELS.index(name) for name in order]]


def test_top_k_and_log_loss_match_sklearn(result, case):
    y_true, prob = case["y_true"], case["prob"]
    known = np.isin(y_true, MODEL_LABELS)
    order, sorted_prob = _sorted_columns(prob)
    for k in (1, 2, 3):
        expected = top_k_accuracy_score(y_true[known], sorted_prob[known], k=k, labels=order)
        # Unseen labels are misses: sklearn's value on known rows, diluted by all rows.
        assert result.top_k[k] == pytest.approx(expected * known.sum() / len(y_true), abs=1e-12), k
    assert result.top_k[1] == pytest.approx(result.accuracy, abs=1e-12)
    assert result.log_loss_rows == known.sum()
    assert result.log_loss == pytest.approx(log_loss(y_true[known], sorted_prob[known], labels=order), rel=1e-12)


def test_top_k_ties_break_like_sklearn(spark):
    labels = ["a", "b", "c", "d"]  # sorted, so sklearn can take the same columns
    prob = np.array([
        [0.25, 0.25, 0.25, 0.25],
        [0.4, 0.2, 0.2, 0.2],
        [0.1, 0.3, 0.3, 0.3],
        [0.3, 0.3, 0.2, 0.2],
        [0.5, 0.0, 0.5, 0.0],
    ])
    y_true = np.array(["a", "b", "d", "b", "a"])
    rows = [(f"p{i}", y_true[i], labels[int(prob[i].argmax())], prob[i].tolist(), None) for i in range(len(prob))]
    res = evaluate_predictions(_frame(spark, rows), labels, top_k=[1, 2, 3, 4])
    for k in (1, 2, 3, 4):
        assert res.top_k[k] == pytest.approx(top_k_accuracy_score(y_true, prob, k=k, labels=labels), abs=1e-12), k


def test_log_loss_clips_zero_probabilities_like_sklearn(spark):
    labels = ["a", "b", "c"]
    prob = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    y_true = np.array(["b", "b", "c"])
    rows = [(f"p{i}", y_true[i], labels[int(prob[i].argmax())], prob[i].tolist(), None) for i in range(3)]
    res = evaluate_predictions(_frame(spark, rows), labels)
    assert res.log_loss == pytest.approx(log_loss(y_true, prob, labels=labels), rel=1e-12)
    assert res.log_loss > 10  # the clipped zero dominates, finitely


def test_ece_hand_worked(spark):
    # Five bins of width 0.2. Confidences and correctness:
    #   0.9 right, 0.95 wrong -> bin (0.8, 1.0]: accuracy 1/2, confidence 0.925, gap 0.425
    #   0.5 right             -> bin (0.4, 0.6]: accuracy 1,   confidence 0.5,   gap 0.5
    #   0.7 right, 0.65 right -> bin (0.6, 0.8]: accuracy 1,   confidence 0.675, gap 0.325
    # ECE = 2/5 * 0.425 + 1/5 * 0.5 + 2/5 * 0.325 = 0.17 + 0.1 + 0.13 = 0.4
    labels = ["a", "b"]
    rows = [
        ("p0", "a", "a", [0.9, 0.1], None),
        ("p1", "a", "b", [0.05, 0.95], None),
        ("p2", "b", "b", [0.5, 0.5], None),  # a tie: the prediction column says b, the confidence is 0.5
        ("p3", "b", "b", [0.3, 0.7], None),
        ("p4", "a", "a", [0.65, 0.35], None),
    ]
    res = evaluate_predictions(_frame(spark, rows), labels, settings=EvaluationSettings(calibration_bins=5))
    assert res.ece == pytest.approx(0.4, abs=1e-12)
    assert [b.count for b in res.calibration] == [0, 0, 1, 2, 2]
    assert res.calibration[4].accuracy == pytest.approx(0.5) and res.calibration[4].confidence == pytest.approx(0.925)
    assert res.calibration[0].accuracy is None


def test_ece_matches_numpy_reference(result, case):
    y_true, y_pred, prob = case["y_true"], case["y_pred"], case["prob"]
    conf = prob.max(axis=1)
    correct = (y_true == y_pred).astype(float)
    bins = np.clip(np.ceil(conf * 10).astype(int) - 1, 0, 9)
    expected = sum(
        (bins == b).sum() / len(conf) * abs(correct[bins == b].mean() - conf[bins == b].mean())
        for b in range(10) if (bins == b).any()
    )
    assert result.ece == pytest.approx(expected, abs=1e-12)
    assert sum(b.count for b in result.calibration) == len(conf)


def test_wrong_label_order_is_detected(spark, case, caplog):
    frame = _frame(spark, case["rows"])
    with caplog.at_level(logging.WARNING, logger="sparkvision.evaluation.metrics"):
        res = evaluate_predictions(frame, list(reversed(MODEL_LABELS)))
    assert res.argmax_mismatch_rows > 0
    assert "order" in caplog.text


def test_without_model_labels_label_metrics_still_work(spark, case):
    res = evaluate_predictions(_frame(spark, case["rows"]), None)
    assert res.accuracy == pytest.approx(accuracy_score(case["y_true"], case["y_pred"]), abs=1e-12)
    assert res.log_loss is None and res.ece is None and res.top_k[1] is None
    assert res.missing_probability_rows == 600


def test_round_trips_through_json(result):
    again = EvaluationResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.to_dict() == result.to_dict()
    assert not any(isinstance(v, float) and math.isnan(v) for v in again.summary().values())


def test_most_confidently_wrong_is_top_n(spark, case):
    top = most_confidently_wrong(_frame(spark, case["rows"]), 5)
    y_true, y_pred, prob = case["y_true"], case["y_pred"], case["prob"]
    wrong = np.flatnonzero(y_true != y_pred)
    expected = sorted(prob[wrong].max(axis=1), reverse=True)[:5]
    assert [t["confidence"] for t in top] == pytest.approx(expected, abs=1e-12)
    assert all(t["label"] != t["prediction"] for t in top)


def test_float_arrays_and_mllib_vectors_are_accepted(spark, case, result):
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    frame = _frame(spark, case["rows"])
    as_float = frame.withColumn("probability", F.col("probability").cast("array<float>"))
    as_vector = frame.withColumn("probability", F.when(F.col("probability").isNotNull(),
                                                       array_to_vector("probability")))
    for variant in (as_float, as_vector):
        res = evaluate_predictions(variant, MODEL_LABELS, top_k=[1, 2, 3],
                                   settings=EvaluationSettings(calibration_bins=10))
        assert res.rows == result.rows and res.probability_rows == result.probability_rows
        assert res.accuracy == result.accuracy
        assert res.log_loss == pytest.approx(result.log_loss, rel=1e-6)
