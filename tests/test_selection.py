"""Logistic regression's regParam and standardization chosen by k-fold CV on real cached features
(``sparkvision.ml.selection``, no Spark): interior choices, a grid that grows past its end, and
accuracy against the issue-13 hand probe (scikit-learn, C by 3-fold CV from {0.1, 1, 10})."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from sparkvision.config import TransferSettings
from sparkvision.ml.selection import _path_scores, fit_logreg, select_logreg, stratified_folds
from sparkvision.models.runner import ClassifierRunner

CLASSES = ["cassette_player", "chain_saw", "church", "english_springer", "french_horn", "garbage_truck",
           "gas_pump", "golf_ball", "parachute", "tench"]


@pytest.fixture(scope="module")
def features(imagenette):
    """Pooled EfficientNet-Lite0 vectors of 20 train and 10 val photos per class (the featurizer's own runner)."""
    runner = ClassifierRunner.from_registry("efficientnet_lite0", threads=1, batch_size=16)

    def split(name: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
        files = [(c, f) for c in CLASSES for f in sorted((imagenette / name / c).iterdir())[:per_class]]
        out = runner.features([f.read_bytes() for _, f in files])
        assert out.errors == [None] * len(files)
        return out.values, np.array([c for c, _ in files])

    return split("train", 20), split("val", 10)


def test_folds_are_stratified_and_seeded():
    labels = np.array(["a"] * 10 + ["b"] * 7)
    folds = stratified_folds(labels, 3, seed=1)
    assert np.array_equal(folds, stratified_folds(labels, 3, seed=1))
    assert not np.array_equal(folds, stratified_folds(labels, 3, seed=2))
    for value, size in (("a", 10), ("b", 7)):
        counts = np.bincount(folds[labels == value], minlength=3)
        assert counts.max() - counts.min() <= 1 and counts.sum() == size


def test_default_grid_choice_is_interior_recorded_and_matches_the_hand_probe(features):
    (x, y), (x_val, y_val) = features
    grid = TransferSettings().logreg_grid_reg
    chosen = select_logreg(x, y, grid, folds=3, seed=42)
    tried = sorted({s.reg_param for s in chosen.scores})
    assert set(grid) <= set(tried)
    assert tried[0] < chosen.reg_param < tried[-1]  # never the end of the grid it searched
    assert {s.standardization for s in chosen.scores} == {True, False}  # both decided by CV
    assert len(chosen.scores) == 2 * len(tried) and chosen.folds == 3 and chosen.rows == 200
    best = max(chosen.scores, key=lambda s: (s.cv_accuracy, s.reg_param, -s.cv_log_loss))
    assert (best.reg_param, best.standardization) == (chosen.reg_param, chosen.standardization)
    record = chosen.to_dict()
    assert record["regParam"] == chosen.reg_param and record["standardization"] == chosen.standardization

    # The chosen model, refitted on all 200 rows, against the hand probe on the same vectors.
    ours = _path_scores(x, y, x_val, y_val, [chosen.reg_param], chosen.standardization, np.unique(y), 500)[0][0]
    probe = GridSearchCV(LogisticRegression(max_iter=1000), {"C": [0.1, 1, 10]}, cv=3).fit(x, y)
    theirs = float(np.mean(probe.predict(x_val) == y_val))
    assert ours >= theirs - 0.02, (ours, theirs)  # at most 2 of 100 photos behind
    assert ours >= 0.95


def test_a_grid_whose_best_value_is_at_its_end_is_extended():
    # Two separable, unbalanced classes. Far too strong a penalty shrinks the weights to
    # nothing and the unpenalised intercept then predicts the larger class for every row
    # (accuracy 30/42); at 6.0 a few rows are still wrong, and the weakest value being strictly
    # the best, the search must walk down past the given grid.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(42, 3))
    x[:30, 0] += 3.0
    x[30:, 0] -= 3.0
    y = np.array(["a"] * 30 + ["b"] * 12)
    chosen = select_logreg(x, y, [20.0, 6.0], standardization=(False,), folds=3, seed=0)
    tried = sorted({s.reg_param for s in chosen.scores})
    assert max(s.cv_accuracy for s in chosen.scores if s.reg_param >= 6.0) < chosen.cv_accuracy == 1.0
    assert chosen.reg_param < 6.0 and tried[0] < chosen.reg_param  # extended, and the choice is interior
    assert chosen.reg_param == 1.8  # 6.0 / (20 / 6), rounded to 3 significant digits
    assert all(s.standardization is False for s in chosen.scores)


def test_ties_on_separable_data_go_to_the_strongest_value_without_walking_off_the_grid():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-5, 1, size=(12, 3)), rng.normal(5, 1, size=(12, 3))])
    y = np.array(["a"] * 12 + ["b"] * 12)
    chosen = select_logreg(x, y, [1.0, 0.1, 0.01], folds=3, seed=0)
    assert {s.cv_accuracy for s in chosen.scores} == {1.0}
    assert chosen.reg_param == 1.0 and sorted({s.reg_param for s in chosen.scores}) == [0.01, 0.1, 1.0]


@pytest.mark.parametrize(("classes", "reg_param", "standardization"), [(2, 0.3, False), (3, 0.03, True)])
def test_the_driver_fit_is_the_model_mllib_fits(spark, features, classes, reg_param, standardization):
    """``fit`` hands MLlib the optimum of its own objective: MLlib fitting the same rows agrees."""
    from pyspark.ml.classification import LogisticRegression as MLlibLogisticRegression
    from pyspark.ml.linalg import Vectors

    from sparkvision.ml.classifier import logreg_model

    (x, y), _ = features
    keep = np.isin(y, CLASSES[:classes])
    # 32 of the 1,280 dimensions: MLlib's own fit without standardization crawls on all of them
    x, labels = x[keep][:, :32], np.searchsorted(CLASSES, y[keep])
    frame = spark.createDataFrame([(Vectors.dense(row.tolist()), float(label)) for row, label in zip(x, labels, strict=True)],
                                  ["features", "label"])
    estimator = MLlibLogisticRegression(family="multinomial", regParam=reg_param, standardization=standardization,
                                        maxIter=1000, tol=1e-10)
    theirs = estimator.fit(frame)
    coefficients, intercepts = fit_logreg(x, labels, classes, reg_param, standardization)
    ours = logreg_model(estimator, coefficients, intercepts)
    assert ours.uid == estimator.uid and ours.getRegParam() == reg_param and ours.numClasses == classes
    np.testing.assert_allclose(ours.coefficientMatrix.toArray(), theirs.coefficientMatrix.toArray(), atol=1e-4)
    np.testing.assert_allclose(intercepts, theirs.interceptVector.toArray(), atol=1e-4)
    theirs_p, ours_p = (np.array([r.probability.toArray() for r in m.transform(frame).collect()]) for m in (theirs, ours))
    np.testing.assert_allclose(ours_p, theirs_p, atol=1e-5)
    assert np.abs(theirs_p - 1 / classes).max() > 0.2  # a fitted model, not a uniform one


def test_bad_inputs_are_refused_with_a_reason():
    x = np.random.default_rng(0).normal(size=(6, 4))
    with pytest.raises(ValueError, match="at least 2 classes"):
        select_logreg(x, np.array(["a"] * 6), [0.1])
    with pytest.raises(ValueError, match="at least 2 rows of every class"):
        select_logreg(x, np.array(["a"] * 5 + ["b"]), [0.1])
    with pytest.raises(ValueError, match="positive"):
        select_logreg(x, np.array(["a", "b"] * 3), [0.0])
