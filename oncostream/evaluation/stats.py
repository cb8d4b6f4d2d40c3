"""Sampling uncertainty of the evaluation figures: percentile bootstrap over the independent units
(series for LDCT, exams for mammography), so a model card can say how far a figure from a few dozen
phantoms may move on the next draw; and the expected calibration error with the floor that sampling
alone puts under it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

BOOTSTRAP_REPS = 400
BOOTSTRAP_SEED = 20261128


def bootstrap_ci95(n_units: int, statistics: Callable[[np.ndarray], dict[str, float]], keys: Sequence[str],
                   reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> dict[str, list[float]]:
    """``{key + "_ci95": [low, high]}``: 2.5th and 97.5th percentiles of ``statistics(indices)[key]``
    over ``reps`` resamples (with replacement) of the unit indices; NaN draws (e.g. one class
    missing from a resample) are left out. Deterministic for a fixed seed."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {key: [] for key in keys}
    for _ in range(reps if n_units else 0):
        values = statistics(rng.integers(0, n_units, n_units))
        for key in keys:
            if np.isfinite(values[key]):
                draws[key].append(float(values[key]))
    return {f"{key}_ci95": ([float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))] if d
                            else [float("nan"), float("nan")]) for key, d in draws.items()}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Mean |mean probability - observed rate| over equal-width probability bins, weighted by the
    share of samples in each bin."""
    probabilities = np.asarray(probabilities, float)
    labels = np.asarray(labels, float)
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(probabilities[inside].mean() - labels[inside].mean())
    return float(error)


def ece_if_calibrated(probabilities: np.ndarray, key: str, draws: int = BOOTSTRAP_REPS,
                      seed: int = BOOTSTRAP_SEED) -> dict[str, float]:
    """``{key + "_if_calibrated": median, key + "_if_calibrated_p95": 95th percentile}`` of the ECE of
    a perfectly calibrated model with these same probabilities: labels drawn as Bernoulli(p). ECE is
    biased upwards on small samples (about 0.05 for 200 exams, 0.12 for 60 nodules), so a measured ECE
    below the 95th percentile is within sampling noise of perfect calibration."""
    p = np.asarray(probabilities, float)
    if not len(p):
        return {f"{key}_if_calibrated": float("nan"), f"{key}_if_calibrated_p95": float("nan")}
    rng = np.random.default_rng(seed)
    values = [expected_calibration_error(p, rng.random(len(p)) < p) for _ in range(draws)]
    return {f"{key}_if_calibrated": float(np.median(values)),
            f"{key}_if_calibrated_p95": float(np.percentile(values, 95))}
