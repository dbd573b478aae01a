"""L2-regularised multinomial logistic regression in numpy, fitted by Newton's method.

Owns the maths of the classifier policy and nothing else: fitting weights to a feature matrix,
turning features into probabilities, and the accuracy and calibration numbers reported for them.
The problems are small (a few thousand rows, a few hundred features, two or three classes), so
the exact Hessian fits in memory and Newton converges in a dozen steps, in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SoftmaxModel:
    """Weights of a multinomial logistic regression over standardised features.

    Attributes:
        weights: (features, classes) float64 weights.
        bias: (classes,) float64 biases.
        mean: (features,) mean subtracted from each feature.
        scale: (features,) divisor of each feature after centring.
    """

    weights: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Return the (n, classes) logits of an (n, features) matrix."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return np.asarray(z @ self.weights + self.bias)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Return the (n, classes) class probabilities of an (n, features) matrix."""
        return softmax(self.logits(features))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Return the row-wise softmax of `logits`, computed stably."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def balanced_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Return per-row weights that give every present class the same total weight."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    per_class = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return np.asarray(per_class[labels])


def fit_softmax(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    l2: float = 1e-2,
    sample_weight: np.ndarray | None = None,
    max_iter: int = 30,
    tol: float = 1e-7,
) -> SoftmaxModel:
    """Fit an L2-regularised multinomial logistic regression by damped Newton steps.

    The loss is the weighted mean cross-entropy plus ``l2 / 2 * ||weights||^2`` on standardised
    features (biases unregularised), with the last class's weights fixed at zero.

    Args:
        features: (n, d) matrix.
        labels: (n,) integer classes in ``range(n_classes)``.
        n_classes: Number of classes (at least 2).
        l2: Regularisation strength.
        sample_weight: (n,) non-negative row weights; uniform when None.
        max_iter: Most Newton steps.
        tol: Stop when the largest gradient entry falls below this.

    Returns:
        The fitted model.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n, d = x.shape
    if n_classes < 2 or n == 0 or y.shape != (n,) or y.min() < 0 or y.max() >= n_classes:
        raise ValueError("need at least one row and labels in range(n_classes >= 2)")
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    xa = np.hstack([(x - mean) / scale, np.ones((n, 1))])
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    w = w / w.sum()
    onehot = np.eye(n_classes)[y][:, :-1]
    reg = np.full(d + 1, l2)
    reg[-1] = 1e-8
    size, free = d + 1, n_classes - 1
    # The last class is the reference (logit 0), so the Hessian is nonsingular and, for two
    # classes, a single block: plain binary logistic regression.
    theta = np.zeros((size, free))

    def logits_of(t: np.ndarray) -> np.ndarray:
        return np.hstack([xa @ t, np.zeros((n, 1))])

    def loss(t: np.ndarray) -> float:
        logits = logits_of(t)
        top = logits.max(axis=1, keepdims=True)
        lse = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
        data = -(w * (logits[np.arange(n), y] - lse)).sum()
        return float(data + 0.5 * (reg[:, None] * t * t).sum())

    current = loss(theta)
    for _ in range(max_iter):
        p = softmax(logits_of(theta))[:, :-1]
        grad = xa.T @ (w[:, None] * (p - onehot)) + reg[:, None] * theta
        if np.abs(grad).max() < tol:
            break
        hessian = np.zeros((free * size, free * size))
        for k in range(free):
            for m in range(k, free):
                coef = w * p[:, k] * ((k == m) - p[:, m])
                block = xa.T @ (xa * coef[:, None])
                if k == m:
                    block[np.diag_indices(size)] += reg
                hessian[k * size:(k + 1) * size, m * size:(m + 1) * size] = block
                hessian[m * size:(m + 1) * size, k * size:(k + 1) * size] = block.T
        g = grad.T.reshape(-1)
        step = np.linalg.solve(hessian, g).reshape(free, size).T
        t, decrease = 1.0, float(g @ step.T.reshape(-1))
        while True:
            candidate = loss(theta - t * step)
            if candidate <= current - 1e-4 * t * decrease or t < 1e-6:
                break
            t /= 2
        theta, previous, current = theta - t * step, current, candidate
        if previous - current < tol * tol:
            break
    theta = np.hstack([theta, np.zeros((size, 1))])
    return SoftmaxModel(weights=theta[:-1], bias=theta[-1], mean=mean, scale=scale)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Return the fraction of rows whose most probable class is the label."""
    return float((probabilities.argmax(axis=1) == labels).mean()) if len(labels) else 0.0


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 10
) -> float:
    """Return the expected calibration error of the top-class probability (equal-width bins)."""
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
