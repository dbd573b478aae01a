"""The classifier's maths: a calibrated multinomial logistic regression, fitted by scikit-learn.

Owns fitting (`fit_logistic`: scikit-learn's `LogisticRegression` on standardised features, its
inverse regularisation chosen by cross-validation, then one temperature fitted on out-of-fold
logits), the numpy inference that routing uses (`SoftmaxModel`), and the accuracy and calibration
numbers reported for them.

scikit-learn is imported inside the fitting functions only: a fitted model is four arrays and a
temperature, so routing computes its probabilities with numpy and never pays scikit-learn's import
(about half a second and tens of MB) nor loads a pickle. Temperature scaling is the calibration
because it is one number that keeps the argmax (so accuracy is unchanged) and is stored as an
array; `CalibratedClassifierCV` would store an ensemble of isotonic or sigmoid models instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

C_GRID: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
"""Inverse regularisation strengths (scikit-learn's ``C``) tried when none is given."""


@dataclass(frozen=True)
class SoftmaxModel:
    """A multinomial logistic regression over standardised features, as plain arrays.

    Attributes:
        weights: (features, classes) float64 weights.
        bias: (classes,) float64 biases.
        mean: (features,) mean subtracted from each feature.
        scale: (features,) divisor of each feature after centring.
        temperature: Divisor of the logits (calibration); 1.0 leaves them as fitted.
    """

    weights: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    temperature: float = 1.0

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Return the (n, classes) uncalibrated logits of an (n, features) matrix."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return np.asarray(z @ self.weights + self.bias)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Return the (n, classes) calibrated class probabilities of an (n, features) matrix."""
        return softmax(self.logits(features) / self.temperature)


@dataclass(frozen=True)
class FitReport:
    """How `fit_logistic` chose its settings.

    Attributes:
        c: The chosen inverse regularisation strength.
        cv_accuracy: Mean cross-validated accuracy of each tried ``C`` (same order as tried).
        folds: Cross-validation folds used (0 when there were too few examples per class).
        temperature: The fitted temperature.
        ece_before: Out-of-fold expected calibration error before temperature scaling.
        ece_after: The same after it.
    """

    c: float
    cv_accuracy: dict[str, float]
    folds: int
    temperature: float
    ece_before: float | None
    ece_after: float | None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Return the row-wise softmax of `logits`, computed stably."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _check(features: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or n_classes < 2 or not len(y) or y.shape != (len(x),):
        raise ValueError("need an (n, d) feature matrix and n labels, n >= 1, n_classes >= 2")
    if y.min() < 0 or y.max() >= n_classes or len(set(y.tolist())) < 2:
        raise ValueError("labels must lie in range(n_classes) and hold at least two classes")
    if not np.isfinite(x).all():
        raise ValueError("features must be finite")
    return x, y


def _fit_once(x: np.ndarray, y: np.ndarray, n_classes: int, c: float,
              class_weight: str | None) -> SoftmaxModel:
    """Fit scikit-learn's LogisticRegression on standardised `x`; return it as arrays."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    model = LogisticRegression(C=c, class_weight=class_weight, max_iter=5000, tol=1e-6)
    model.fit((x - mean) / scale, y)
    # scikit-learn keeps only the classes it saw, and one row of weights for two classes (the
    # logit of the second); both become one column per class here, absent classes at -inf-ish.
    weights = np.zeros((x.shape[1], n_classes))
    bias = np.full(n_classes, -30.0)
    seen = [int(k) for k in model.classes_]
    if len(seen) == 2:
        weights[:, seen[1]] = model.coef_[0]
        bias[seen[0]], bias[seen[1]] = 0.0, float(model.intercept_[0])
    else:
        weights[:, seen] = model.coef_.T
        bias[seen] = model.intercept_
    return SoftmaxModel(weights=weights, bias=bias, mean=mean, scale=scale)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Return the temperature minimising the negative log-likelihood of `labels` under `logits`.

    Searched on log-temperature in [1/20, 20] (a bounded one-dimensional problem).
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        scaled = logits / np.exp(log_t)
        top = scaled.max(axis=1, keepdims=True)
        lse = (top + np.log(np.exp(scaled - top).sum(axis=1, keepdims=True)))[:, 0]
        return float((lse - scaled[rows, labels]).mean())

    result = minimize_scalar(nll, bounds=(-np.log(20), np.log(20)), method="bounded")
    return float(np.exp(result.x))


def fit_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    c: float | None = None,
    class_weight: str | None = None,
    folds: int = 5,
    seed: int = 0,
) -> tuple[SoftmaxModel, FitReport]:
    """Fit a calibrated multinomial logistic regression.

    With ``c=None``, each `C_GRID` value is scored by stratified `folds`-fold cross-validated
    accuracy and the best (ties: the stronger regularisation) is kept. The temperature is then
    fitted on the out-of-fold logits of the chosen ``C`` (never on rows a model was fitted on) and
    the final model is refitted on every row.

    Args:
        features: (n, d) finite matrix.
        labels: (n,) integer classes in ``range(n_classes)``, at least two distinct.
        n_classes: Number of classes (columns of the model).
        c: Inverse regularisation strength; None chooses one by cross-validation.
        class_weight: scikit-learn's ``class_weight`` (None or ``"balanced"``).
        folds: Cross-validation folds (fewer when a class has fewer rows; none below two).
        seed: Seed of the fold assignment.

    Returns:
        The fitted model (temperature included) and how it was chosen.

    Raises:
        ValueError: On malformed features or labels.
    """
    x, y = _check(features, labels, n_classes)
    smallest = int(np.bincount(y)[np.unique(y)].min())
    k = min(folds, smallest)
    grid = (c,) if c is not None else C_GRID
    scores: dict[str, float] = {}
    out_of_fold: dict[float, np.ndarray] = {}
    if k >= 2:
        from sklearn.model_selection import StratifiedKFold

        splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y))
        for value in grid:
            logits = np.zeros((len(y), n_classes))
            for train, held in splits:
                logits[held] = _fit_once(x[train], y[train], n_classes, value,
                                         class_weight).logits(x[held])
            out_of_fold[value] = logits
            scores[f"{value:g}"] = round(float((logits.argmax(axis=1) == y).mean()), 4)
    chosen = grid[0] if not scores else max(grid, key=lambda v: (scores[f"{v:g}"], -v))
    temperature, before, after = 1.0, None, None
    if chosen in out_of_fold:
        logits = out_of_fold[chosen]
        temperature = fit_temperature(logits, y)
        before = round(expected_calibration_error(softmax(logits), y), 4)
        after = round(expected_calibration_error(softmax(logits / temperature), y), 4)
    final = _fit_once(x, y, n_classes, chosen, class_weight)
    model = SoftmaxModel(final.weights, final.bias, final.mean, final.scale, temperature)
    return model, FitReport(c=chosen, cv_accuracy=scores, folds=k if k >= 2 else 0,
                            temperature=round(temperature, 4), ece_before=before,
                            ece_after=after)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Return the fraction of rows whose most probable class is the label."""
    return float((probabilities.argmax(axis=1) == labels).mean()) if len(labels) else 0.0


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray | Sequence[int], bins: int = 10
) -> float:
    """Return the expected calibration error of the top-class probability (equal-width bins)."""
    labels = np.asarray(labels)
    if not len(labels):
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = edges == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)
