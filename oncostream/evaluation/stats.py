"""Sampling uncertainty of the evaluation figures: percentile bootstrap over the independent units
(series for LDCT, exams for mammography), so a model card can say how far a figure from a few dozen
phantoms may move on the next draw."""

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
