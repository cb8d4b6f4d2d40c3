"""The follow-up figures of `oncostream eval --rounds 2`, computed on hand-made events and truths."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from oncostream.contracts import LungRadsCategory, NoduleFinding, TriageEvent
from oncostream.evaluation.followup import _Patient, followup_metrics

T = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _finding(center, lung_rads="3", uid="t", prior=None, growing=None):
    return NoduleFinding(center_mm=center, mean_diameter_mm=8, long_axis_mm=9, volume_mm3=250, composition="solid",
                         malignancy_probability=0.2, lung_rads=lung_rads, tracking_uid=uid,
                         prior_tracking_uid=prior, growing=growing)


def _event(findings):
    return TriageEvent(study_instance_uid="1.2", program="default", modality="CT", priority="ROUTINE",
                       category=LungRadsCategory(lung_rads="3"), findings=findings, confidence=1,
                       needs_human_review=False, model_versions={"m": "1"}, sr_sop_instance_uid=None,
                       arrived_at=T, triaged_at=T)


def _truth(nodules):
    return {"nodules": [{"center_mm": c, "diameter_mm": d, "growing": g, "prior_index": p, "follow_up_lung_rads": lr}
                        for c, d, g, p, lr in nodules]}


def test_agreement_growth_and_tracking_are_counted_per_true_nodule():
    truth1 = _truth([((0, 0, 0), 8, None, None, None), ((50, 0, 0), 7, None, None, None)])
    truth2 = _truth([((0, 0, 40), 8.2, False, 0, "3"),  # stable 4A -> 3
                     ((50, 0, 40), 10, True, 1, "4B"),  # grown
                     ((-50, 0, 40), 7, None, None, "4A"),  # new, missed
                     ((0, 60, 40), 4, None, None, "2")])  # new, small, found
    event1 = _event([_finding((0, 0, 0), "4A", "a"), _finding((50, 0, 0), "3", "b")])
    event2 = _event([_finding((0.5, 0, 40), "3", "a", "a", False),
                     _finding((50, 0.5, 40), "4X", "b", "b", True),  # 4X agrees with a true 4B
                     _finding((0, 60, 40), "2", "c", None, None),
                     _finding((90, 90, 40), "4A", "d", "x", True)])  # a false growth call on nothing
    results = followup_metrics([_Patient(truth1, truth2, event1, event2)])
    assert results["followup_nodules_ge6mm"] == 3 and results["followup_nodules_ge6mm_found"] == 2
    assert results["followup_lungrads_agreement_ge6mm"] == 1.0
    assert results["followup_lungrads_agreement_ge6mm_all"] == pytest.approx(2 / 3)
    assert results["followup_growth_sensitivity"] == 1.0 and results["followup_growing_nodules"] == 1
    assert results["followup_false_growth_per_scan"] == 1.0
    assert results["followup_match_accuracy"] == 1.0


def test_a_wrong_match_and_a_missed_growth_are_errors():
    truth1 = _truth([((0, 0, 0), 8, None, None, None), ((20, 0, 0), 8, None, None, None)])
    truth2 = _truth([((0, 0, 0), 10.5, True, 0, "4B"), ((20, 0, 0), 8, False, 1, "3")])
    event1 = _event([_finding((0, 0, 0), "4A", "a"), _finding((20, 0, 0), "4A", "b")])
    event2 = _event([_finding((0, 0, 0), "3", "b", "b", False), _finding((20, 0, 0), "3", "a", "a", False)])
    results = followup_metrics([_Patient(truth1, truth2, event1, event2)])
    assert results["followup_growth_sensitivity"] == 0.0
    assert results["followup_growth_missed_below_threshold"] == 1  # matched (to the wrong prior), not growing
    assert results["followup_match_accuracy"] == 0.0
    assert results["followup_lungrads_agreement_ge6mm"] == 0.5


def test_a_growing_nodule_missed_in_round_one_is_read_as_new():
    truth1 = _truth([((0, 0, 0), 5, None, None, None)])
    truth2 = _truth([((0, 0, 0), 9, True, 0, "4B")])
    event2 = _event([_finding((0, 0, 0), "4B", "n", None, None)])
    results = followup_metrics([_Patient(truth1, truth2, _event([]), event2)])
    assert results["followup_growth_sensitivity"] == 0.0
    assert results["followup_growth_missed_prior_not_found"] == 1
    assert results["followup_lungrads_agreement_ge6mm"] == 1.0  # a new 9 mm solid nodule is 4B too
