"""The follow-up figures of `oncostream eval --rounds 2`, computed on hand-made events and truths."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from oncostream.contracts import LungRadsCategory, NoduleFinding, TriageEvent
from oncostream.evaluation.followup import _Patient, followup_metrics

T = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _finding(center, lung_rads="3", uid="t", prior=None, growing=None, change=None):
    """``change``: diameter change; given without ``prior``, measured against a look-back candidate."""
    if change is None and prior is not None:
        change = 0.5
    return NoduleFinding(center_mm=center, mean_diameter_mm=8, long_axis_mm=9, volume_mm3=250, composition="solid",
                         malignancy_probability=0.2, lung_rads=lung_rads, tracking_uid=uid,
                         prior_tracking_uid=prior, growing=growing, diameter_change_mm=change)


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


def test_growth_called_against_a_look_back_candidate_is_counted_apart():
    # the round-1 read reported none of the four nodules
    truth1 = _truth([((0, 0, 0), 5, None, None, None), ((40, 0, 0), 6, None, None, None),
                     ((80, 0, 0), 6, None, None, None), ((0, 50, 0), 5, None, None, None)])
    truth2 = _truth([((0, 0, 0), 9, True, 0, "4B"),  # seen in retrospect, growing
                     ((40, 0, 0), 8.5, True, 1, "4B"),  # seen in retrospect, measured not growing
                     ((80, 0, 0), 6.2, False, 2, "2"),  # seen in retrospect, stable, called growing: a false call
                     ((0, 50, 0), 9, True, 3, "4B")])  # no look-back candidate: read as new
    event2 = _event([_finding((0, 0, 0), "4B", "a", None, True, change=4.0),
                     _finding((40, 0, 0), "3", "b", None, False, change=1.0),
                     _finding((80, 0, 0), "4A", "c", None, True, change=1.8),
                     _finding((0, 50, 0), "4B", "d")])
    results = followup_metrics([_Patient(truth1, truth2, _event([]), event2)])
    assert results["followup_growing_nodules"] == 3 and results["followup_growth_sensitivity"] == pytest.approx(1 / 3)
    assert results["followup_growth_called_in_retrospect"] == 1
    assert results["followup_growth_missed_retrospect_not_growing"] == 1
    assert results["followup_growth_missed_prior_not_found"] == 1
    assert results["followup_false_growth_per_scan"] == 1.0 and results["followup_false_growth_in_retrospect"] == 1


def test_rounds_with_modality_ct_leave_the_mammography_patients_out(monkeypatch, tmp_path):
    """`oncostream eval --rounds 2 --modality ct`: the same LDCT patients, no mammography rounds."""
    import argparse
    import json

    from oncostream import evaluation
    from oncostream.evaluation import followup

    calls = []
    monkeypatch.setattr(followup, "evaluate_followup",
                        lambda seeds, size, mammo=True: calls.append((seeds, size, mammo)) or {"n_followup_patients": 2})
    args = argparse.Namespace(seeds=range(5, 7), json_path=tmp_path / "r.json", size="small", modality="ct", rounds=2)
    assert evaluation.main(args) == 0
    assert calls == [(range(5, 7), "small", False)]
    assert json.loads((tmp_path / "r.json").read_text())["modality"] == "ct"
    with pytest.raises(SystemExit, match="mg is not offered"):
        evaluation.main(argparse.Namespace(**{**vars(args), "modality": "mg"}))
