"""`oncostream eval --rounds 2` on a few small fresh patients: the follow-up figures come out of the served
pipeline and mean what they say (the full run's figures are in the README)."""

from __future__ import annotations

import math

import pytest

from oncostream.evaluation.followup import evaluate_followup

pytestmark = pytest.mark.integration


def test_followup_evaluation_on_small_rounds():
    results = evaluate_followup(range(3_100_000, 3_100_003), "small")
    assert results["n_followup_patients"] == 3
    # the lungs were aligned: the patient moved 20-60 mm between rounds, the centroids say so within a few mm
    assert results["followup_alignment_error_mm_median"] < 5.0
    for key in ("followup_lungrads_agreement_ge6mm", "followup_growth_sensitivity", "followup_match_accuracy"):
        assert math.isnan(results[key]) or 0.0 <= results[key] <= 1.0
    assert results["followup_false_growth_per_scan"] <= 1.0
    assert results["followup_nodules_ge6mm_found"] <= results["followup_nodules_ge6mm"]
    assert results["mammo_new_flags_per_exam"] <= 1.0
