"""The bootstrap intervals of oncostream.evaluation.stats."""

import numpy as np

from oncostream.evaluation.mammo import roc_auc
from oncostream.evaluation.stats import bootstrap_ci95, ece_if_calibrated, expected_calibration_error


def test_interval_brackets_the_mean_and_narrows_with_more_units():
    rng = np.random.default_rng(7)
    widths = []
    for n in (20, 500):
        values = rng.normal(0.5, 0.1, n)
        ci = bootstrap_ci95(n, lambda idx: {"mean": float(values[idx].mean())}, ["mean"])["mean_ci95"]
        assert ci[0] < values.mean() < ci[1]
        widths.append(ci[1] - ci[0])
    # the standard error falls as 1 / sqrt(n): 5x narrower for 25x the units, within sampling slack
    assert 3.5 < widths[0] / widths[1] < 7.0, widths


def test_resamples_missing_a_class_are_left_out_and_the_result_is_deterministic():
    scores = np.array([0.9, 0.1, 0.2, 0.3])
    labels = np.array([True, False, False, False])  # one positive: many resamples have none

    def figures(idx):
        return {"auc": roc_auc(scores[idx], labels[idx])}

    first = bootstrap_ci95(4, figures, ["auc"])
    assert first == bootstrap_ci95(4, figures, ["auc"])
    assert first["auc_ci95"] == [1.0, 1.0]  # every resample holding the positive ranks it first
    assert all(np.isnan(v) for v in bootstrap_ci95(0, figures, ["auc"])["auc_ci95"])


def test_sampling_floor_of_ece_separates_noise_from_miscalibration():
    rng = np.random.default_rng(21)
    floors = []
    for n in (60, 2000):
        p = rng.beta(1.5, 3.0, n)
        floor = ece_if_calibrated(p, "ece")
        floors.append(floor["ece_if_calibrated"])
        assert floor["ece_if_calibrated"] < floor["ece_if_calibrated_p95"]
        calibrated = rng.random(n) < p
        assert expected_calibration_error(p, calibrated) < floor["ece_if_calibrated_p95"]
        overconfident = rng.random(n) < 0.5 + 0.5 * (p - 0.5)  # true rates pulled towards one half
        if n == 2000:
            assert expected_calibration_error(p, overconfident) > 2 * floor["ece_if_calibrated_p95"]
    # the floor falls roughly as 1 / sqrt(n): ~0.1 on 60 nodules, a few thousandths on thousands
    assert floors[0] > 0.05 > 0.025 > floors[1], floors
