"""The calibration fits the training scripts bake into the exported models (training/calibration.py)."""

import numpy as np
import pytest
from scipy.special import expit, softmax

from training.calibration import fit_logistic, fit_temperature


def test_logistic_recovers_the_generating_weights():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(40_000, 2))
    y = rng.random(len(x)) < expit(x @ np.array([1.5, -0.7]) + 0.4)
    w = fit_logistic(x, y)
    assert w == pytest.approx([1.5, -0.7, 0.4], abs=0.06)


def test_platt_prior_holds_a_tiny_calibration_set_near_the_identity():
    scores = np.array([-2.0, -1.0, 1.0, 2.0])
    labels = np.array([0, 1, 0, 1])  # separable only by noise: the likelihood alone would flatten a
    free = fit_logistic(scores[:, None], labels, l2=0.0)
    held = fit_logistic(scores[:, None], labels, prior=np.array([1.0, 0.0]), l2=1.0)
    assert abs(held[0] - 1.0) < abs(free[0] - 1.0)
    assert abs(held[1]) < 0.2


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_binary_temperature_recovers_the_scale_of_the_labels(true_t):
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, 40_000)
    labels = (rng.random(len(logits)) < expit(logits / true_t)).astype(int)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.08)


def test_multiclass_temperature_recovers_the_scale_of_the_labels():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, (30_000, 4))
    p = softmax(logits / 1.7, axis=1)
    labels = np.array([rng.choice(4, p=row) for row in p])
    assert fit_temperature(logits, labels) == pytest.approx(1.7, rel=0.08)
