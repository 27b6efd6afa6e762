"""Choosing logistic regression's regularisation by k-fold cross-validation on cached feature vectors.

``sparkvision fit`` picks MLlib ``LogisticRegression``'s ``regParam`` and ``standardization``
here, on the driver, from the features the CNN computed once. Each candidate is fitted
with scikit-learn's L-BFGS solver on the *same objective* MLlib minimises, so a chosen
value means the same thing to the final MLlib fit:

* MLlib: ``mean(log loss) + regParam * ||w||^2 / 2``, the intercepts unpenalised; with
  ``standardization`` the penalty applies to the coefficients of the features divided by
  their (sample) standard deviation, and the model is returned on the original scale.
* scikit-learn: ``C * sum(log loss) + ||w||^2 / 2``, i.e. the same with ``C = 1 / (regParam * n)``;
  standardization is fitting on ``X / std``. With two classes MLlib's multinomial family
  penalises both rows, whose optimum is ``w1 = -w0 = w / 2``: a binomial fit with ``C = 2 / (regParam * n)``.

:func:`fit_logreg` then solves the chosen candidate on all rows and returns it in MLlib's
parametrisation, so that ``fit`` can hand MLlib the optimum instead of making it search:
MLlib always optimises in standardized coordinates, and without standardization its penalty
``regParam * w_j^2`` becomes ``regParam * v_j^2 / std_j^2`` there, so near-constant pooled
features make L-BFGS crawl (156 s for 24 rows, about 500 s for Fashion-MNIST 4k on two cores,
one Spark job per step). The two agree to solver precision (tested).

Why not MLlib's ``CrossValidator`` for this: each MLlib fit is dozens of small Spark jobs
(one per L-BFGS step), about 10 s for 800 rows on two cores whatever the data size, so
a grid of 2 x 9 values x 3 folds would cost minutes where featurizing took seconds. Here
the candidates of one fold share a warm-started regularisation path, from strong to weak.
The grid grows past its end when the best value sits there, so the choice is never an
artefact of where the grid stopped. Imports no Spark.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CVScore:
    """One candidate's mean over the folds."""

    reg_param: float
    standardization: bool
    cv_accuracy: float
    cv_log_loss: float


@dataclass
class LogRegSelection:
    """The chosen ``regParam`` and ``standardization`` and every candidate's cross-validated scores."""

    reg_param: float
    standardization: bool
    cv_accuracy: float
    folds: int
    rows: int
    scores: list[CVScore] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "method": f"{self.folds}-fold stratified cross-validation on {self.rows} cached feature vectors",
            "regParam": self.reg_param, "standardization": self.standardization, "cv_accuracy": self.cv_accuracy,
            "candidates": [asdict(s) for s in self.scores],
        }


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold number in 0..k-1 per row: each class's rows, in a seeded random order, dealt round-robin."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        folds[rng.permutation(rows)] = np.arange(len(rows)) % k
    return folds


def _scale(train: np.ndarray) -> np.ndarray:
    """MLlib's standardization divisor: the sample standard deviation, constant features left at 0."""
    std = train.std(axis=0, ddof=1) if len(train) > 1 else np.zeros(train.shape[1])
    return np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)


def sklearn_c(reg_param: float, rows: int, num_classes: int) -> float:
    """scikit-learn's ``C`` for MLlib's multinomial ``regParam`` on ``rows`` rows (see the module doc)."""
    return (2.0 if num_classes == 2 else 1.0) / (reg_param * rows)


def fit_logreg(features: np.ndarray, labels: np.ndarray, num_classes: int, reg_param: float, standardization: bool,
               max_iter: int = 1000, tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """MLlib's multinomial logistic regression optimum on the driver: (coefficients K x d, intercepts K).

    ``labels`` are class indices 0..K-1, every one present. Intercepts are centred as
    MLlib centres them; the coefficients are on the original feature scale.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, dtype=np.float64)
    present = np.unique(labels)
    if len(present) != num_classes or present[0] != 0 or present[-1] != num_classes - 1:
        raise ValueError(f"fit_logreg needs rows of every class 0..{num_classes - 1}, got {present.tolist()}")
    scale = _scale(x) if standardization else np.ones(x.shape[1])
    model = LogisticRegression(C=sklearn_c(reg_param, len(x), num_classes), max_iter=max_iter, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a ConvergenceWarning at max_iter: MLlib stops there just the same
        model.fit(x * scale, labels)
    if num_classes == 2:
        half = model.coef_[0] * scale / 2
        coefficients, intercepts = np.stack([-half, half]), np.array([-1.0, 1.0]) * model.intercept_[0] / 2
    else:
        coefficients, intercepts = model.coef_ * scale, model.intercept_ - model.intercept_.mean()
    return coefficients, intercepts


def _path_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 regs: Sequence[float], standardization: bool, classes: np.ndarray,
                 max_iter: int) -> list[tuple[float, float]]:
    """(accuracy, log loss) on the held-out rows for each of ``regs`` (fitted in that order, warm-started)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    if standardization:
        scale = _scale(x_train)
        x_train, x_test = x_train * scale, x_test * scale
    model = LogisticRegression(max_iter=max_iter, warm_start=True)
    out = []
    for reg in regs:
        model.set_params(C=sklearn_c(reg, len(x_train), len(classes)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning at weak regularisation: the ranking is what counts
            model.fit(x_train, y_train)
        proba = np.zeros((len(x_test), len(classes)))
        proba[:, np.searchsorted(classes, model.classes_)] = model.predict_proba(x_test)
        proba /= proba.sum(axis=1, keepdims=True)  # float rounding; log_loss warns otherwise
        accuracy = float(np.mean(classes[proba.argmax(axis=1)] == y_test))
        out.append((accuracy, float(log_loss(y_test, proba, labels=classes))))
    return out


def select_logreg(
    features: np.ndarray,
    labels: np.ndarray,
    reg_grid: Sequence[float],
    standardization: Sequence[bool] = (True, False),
    folds: int = 3,
    seed: int = 42,
    max_iter: int = 200,
    grid_limits: tuple[float, float] = (1e-7, 100.0),
) -> LogRegSelection:
    """The (regParam, standardization) with the best mean held-out accuracy over ``folds`` stratified folds.

    Ties (common on small sets: accuracy moves in steps of one image) go to the stronger
    regularisation, then to the lower mean log loss: on separable data log loss keeps
    falling as ``regParam`` does, and MLlib's final fit would then run all its steps. Log
    loss alone picked worse on imagenette-mini. When the best ``regParam`` is the grid's
    smallest or largest and strictly more accurate than every other value tried, the grid
    is extended one step (the grid's smallest ratio) beyond it, within ``grid_limits``.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"model selection needs at least 2 classes, got {classes.tolist()}")
    smallest = min(int(np.sum(y == c)) for c in classes)
    k = min(folds, smallest)
    if k < 2:
        raise ValueError(f"{folds}-fold cross-validation needs at least 2 rows of every class; one class has {smallest}")
    grid = sorted({float(r) for r in reg_grid}, reverse=True)  # strong -> weak: each fit warm-starts the next
    if not grid or grid[-1] <= 0:
        raise ValueError(f"reg_grid must hold positive values, got {list(reg_grid)!r}")
    ratio = min((a / b for a, b in zip(grid, grid[1:], strict=False)), default=10.0)
    fold_of = stratified_folds(y, k, seed)
    sums: dict[tuple[float, bool], np.ndarray] = {}

    def score(regs: list[float]) -> None:
        for std in standardization:
            for fold in range(k):
                held = fold_of == fold
                results = _path_scores(x[~held], y[~held], x[held], y[held], regs, std, classes, max_iter)
                for reg, result in zip(regs, results, strict=True):
                    sums.setdefault((reg, std), np.zeros(2))
                    sums[(reg, std)] += np.asarray(result) / k

    score(grid)
    while True:
        best_reg, best_std = max(sums, key=lambda key: (sums[key][0], key[0], -sums[key][1]))
        tried = sorted({reg for reg, _ in sums})
        inner = max((v[0] for (reg, _), v in sums.items() if reg != best_reg), default=-1.0)
        if sums[(best_reg, best_std)][0] <= inner:
            break
        if best_reg == tried[-1] and best_reg * ratio <= grid_limits[1]:
            score([float(f"{best_reg * ratio:.3g}")])
        elif best_reg == tried[0] and best_reg / ratio >= grid_limits[0]:
            score([float(f"{best_reg / ratio:.3g}")])
        else:
            break
    scores = [CVScore(reg, std, float(v[0]), float(v[1]))
              for (reg, std), v in sorted(sums.items(), key=lambda kv: (not kv[0][1], -kv[0][0]))]
    best = sums[(best_reg, best_std)]
    log.info("logistic regression by %d-fold CV on %d rows: regParam %g, standardization %s (CV accuracy %.4f)",
             k, len(y), best_reg, best_std, best[0])
    return LogRegSelection(best_reg, best_std, float(best[0]), k, len(y), scores)
