"""Post-hoc calibration fits shared by the training scripts.

numpy + scipy only (no torch), so the main test environment checks them (tests/unit/test_calibration.py).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_softmax


def fit_logistic(features: np.ndarray, labels: np.ndarray, prior: np.ndarray | None = None,
                 l2: float = 1e-4) -> np.ndarray:
    """Weights of a logistic model (one per feature column, then the bias) minimising the mean
    negative log-likelihood plus ``l2 * |w - prior|^2`` (prior: zeros unless given), by L-BFGS.

    Platt scaling of a score s is ``fit_logistic(s[:, None], y, prior=[1, 0])``: the penalty pulls a
    small calibration set towards leaving the score as it is."""
    x = np.column_stack([np.asarray(features, np.float64), np.ones(len(features))])
    y = np.asarray(labels, np.float64)
    w0 = np.zeros(x.shape[1]) if prior is None else np.asarray(prior, np.float64)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w
        nll = np.mean(np.logaddexp(0.0, z) - y * z)
        gradient = x.T @ (expit(z) - y) / len(y) + 2 * l2 * (w - w0)
        return float(nll + l2 * np.sum((w - w0) ** 2)), gradient

    return minimize(loss, w0, jac=True, method="L-BFGS-B").x


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the negative log-likelihood of ``logits / T``: binary when ``logits``
    is 1-D (labels 0/1), multiclass when it is [N, classes] (labels are class indices)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels)

    def nll(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        if scaled.ndim == 1:
            return float(np.mean(np.logaddexp(0.0, scaled) - y * scaled))
        return float(-np.mean(log_softmax(scaled, axis=1)[np.arange(len(y)), y.astype(int)]))

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))
