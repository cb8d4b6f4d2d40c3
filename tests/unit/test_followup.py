"""Follow-up exams: LDCT nodules matched to the prior round's after aligning the lungs, Lung-RADS v2022
follow-up categories, growth and tracking UIDs carried over, the SR stating the comparison; nodules the
prior read did not report looked for among its look-back candidates; mammography findings new since the
prior exam."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path

import pytest
from pydicom import dcmread

from ingest.lung_field import lung_centroid_mm
from oncostream.contracts import NoduleFinding
from oncostream.settings import Settings
from oncostream.study import LdctInference, LookbackCandidate, NoduleCandidate, PriorStudy, Study
from oncostream.synth.ldct import ldct_datasets, make_ldct_phantom
from oncostream.synth.rounds import LdctRoundPlan, ldct_next_round
from postprocess import codes
from postprocess.followup import seen_in_retrospect
from postprocess.results import build_result
from tests import dicom_tools
from tests.unit import screening_cases as cases

NODULES = [{"diameter_mm": 10.0, "composition": "solid", "margin": "smooth", "malignant": False},
           {"diameter_mm": 9.0, "composition": "solid", "margin": "smooth", "malignant": False},
           {"diameter_mm": 7.0, "composition": "solid", "margin": "smooth", "malignant": False}]
PLAN = LdctRoundPlan(changes=("stable", "grown", "resolved"), interval_days=400, growth_mm=(None, 4.0, None),
                     new_nodules=({"diameter_mm": 6.5, "composition": "solid", "margin": "smooth", "malignant": False},))


def _study(phantom, day: dt.date) -> Study:
    datasets = ldct_datasets(phantom)
    for ds in datasets:
        ds.StudyDate = day.strftime("%Y%m%d")
    return Study(study_instance_uid=phantom.truth.study_instance_uid, modality="CT", datasets=datasets,
                 arrived_at=cases.ARRIVED)


def _inference(phantom) -> LdctInference:
    """One candidate per true nodule, measured as the truth says (the inputs of postprocess)."""
    return LdctInference(nodules=[NoduleCandidate(
        center_mm=t.center_mm, detection_score=0.95, mean_diameter_mm=t.diameter_mm, long_axis_mm=t.diameter_mm,
        volume_mm3=t.volume_mm3, composition=t.composition, malignancy_probability=0.1, uncertainty=0.05)
        for t in phantom.truth.nodules], model_versions=dict(cases.LDCT_VERSIONS))


@lru_cache(maxsize=1)
def _rounds():
    first = make_ldct_phantom(41, "small", nodules=NODULES)
    second, interval = ldct_next_round(41, first, first, 2, PLAN)
    day1 = dt.date(2024, 3, 4)
    study1, study2 = _study(first, day1), _study(second, day1 + dt.timedelta(days=interval))
    baseline = build_result(study1, _inference(first), Settings(), now=cases.NOW,
                            lung_centroid_mm=lung_centroid_mm(study1.datasets))
    prior = PriorStudy(study1.study_instance_uid, study1.study_date, baseline.event)
    follow_up = build_result(study2, _inference(second), Settings(), now=cases.NOW, prior=prior,
                             lung_centroid_mm=lung_centroid_mm(study2.datasets))
    return first, second, baseline, follow_up, study2


def test_baseline_event_carries_the_lung_reference_and_no_prior():
    _, _, baseline, _, _ = _rounds()
    assert baseline.event.lung_centroid_mm is not None and baseline.event.prior_study_instance_uid is None
    assert not baseline.event.category.compared_with_prior
    assert [f.lung_rads for f in baseline.event.findings] == ["4A", "4A", "3"]
    assert all(f.prior_tracking_uid is None and f.growing is None for f in baseline.event.findings)


def test_stable_4a_becomes_3_grown_is_upgraded_new_is_new():
    first, second, baseline, follow_up, _ = _rounds()
    event = follow_up.event
    assert event.prior_study_instance_uid == baseline.event.study_instance_uid
    assert event.prior_interval_days == 400 and event.category.compared_with_prior
    stable, grown, new = event.findings
    before = baseline.event.findings
    # stable 10 mm solid: 4A at baseline, 3 at follow-up; same nodule, same tracking UID
    assert stable.lung_rads == "3" and stable.growing is False
    assert stable.tracking_uid == stable.prior_tracking_uid == before[0].tracking_uid
    assert abs(stable.diameter_change_mm) <= 0.5
    # grown 9 -> 13 mm in 400 days: growing, 4B; volume doubling time from the volumes
    assert grown.lung_rads == "4B" and grown.growing is True and grown.tracking_uid == before[1].tracking_uid
    assert grown.diameter_change_mm == pytest.approx(4.0, abs=0.1)
    assert 150 < grown.volume_doubling_time_days < 300 and grown.volume_change_percent > 100
    # new 6.5 mm solid: v2022 new solid 6-8 mm -> 4A; nothing to compare with
    assert new.lung_rads == "4A" and new.prior_tracking_uid is None
    assert new.diameter_change_mm is None and new.volume_doubling_time_days is None and new.growing is None
    assert new.tracking_uid not in {f.tracking_uid for f in before}
    assert event.category.lung_rads == "4B" and event.priority == "URGENT"


def test_a_comparison_gives_other_output_uids_than_the_baseline_reading():
    _, second, _, follow_up, study2 = _rounds()
    alone = build_result(study2, _inference(second), Settings(), now=cases.NOW)
    assert alone.event.sr_sop_instance_uid != follow_up.event.sr_sop_instance_uid
    assert [f.lung_rads for f in alone.event.findings] == ["4A", "4A", "3"]  # baseline rules


def test_without_lung_alignment_the_shifted_patient_matches_nothing():
    first, second, baseline, _, study2 = _rounds()
    unaligned = baseline.event.model_copy(update={"lung_centroid_mm": None})
    prior = PriorStudy(baseline.event.study_instance_uid, dt.date(2024, 3, 4), unaligned)
    event = build_result(study2, _inference(second), Settings(), now=cases.NOW, prior=prior,
                         lung_centroid_mm=lung_centroid_mm(study2.datasets)).event
    assert all(f.prior_tracking_uid is None for f in event.findings)  # the table moved tens of mm
    assert any("not aligned" in r for r in event.review_reasons) and event.needs_human_review


def test_follow_up_sr_states_the_prior_and_each_change(tmp_path: Path):
    _, _, baseline, follow_up, _ = _rounds()
    path = tmp_path / "sr.dcm"
    follow_up.sr.save_as(path, enforce_file_format=True)
    assert dicom_tools.dciodvfy_errors(path) == []
    assert dicom_tools.dsrdump_ok(path)
    text = dicom_tools.dsrdump_text(path)
    assert baseline.event.study_instance_uid in text
    assert codes.DIAMETER_CHANGE.meaning in text and codes.VOLUME_DOUBLING_TIME.meaning in text
    ds = dcmread(path)
    (summary,) = [item.TextValue for item in _items(ds)
                  if "TextValue" in item and item.ConceptNameCodeSequence[0].CodeValue == codes.DESCRIPTION_OF_CHANGE.value]
    assert "nodule 2 growing (+4.0 mm" in summary and "nodule 3 new" in summary
    assert "1 prior nodule(s) not seen" in summary and "400 days earlier" in summary
    (prior_uid,) = [item.UID for item in _items(ds) if item.get("ValueType") == "UIDREF"
                    and item.ConceptNameCodeSequence[0].CodeValue == codes.PRIOR_STUDY.value]
    assert prior_uid == baseline.event.study_instance_uid


def _items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


@lru_cache(maxsize=1)
def _looked_back():
    """Round 1 read reports only the 7 mm nodule: the stable 10 mm and the growing 9 mm ones sit below the
    detector's operating point (look-back candidates, measured as the truth says), with an unrelated
    detection far from every nodule. Round 2 reads all three nodules (and the new one)."""
    first, second, _, _, study2 = _rounds()
    day1 = dt.date(2024, 3, 4)
    study1 = _study(first, day1)
    stable, grown, small = first.truth.nodules
    inference = _inference(first)
    inference.nodules = inference.nodules[2:]
    far = (stable.center_mm[0], stable.center_mm[1] + 60.0, stable.center_mm[2])
    inference.lookback = [LookbackCandidate(t.center_mm, t.diameter_mm, t.volume_mm3, score)
                          for t, score in ((grown, 0.31), (stable, 0.22))] + [LookbackCandidate(far, 5.0, 65.4, 0.18)]
    baseline = build_result(study1, inference, Settings(), now=cases.NOW, lung_centroid_mm=lung_centroid_mm(study1.datasets))
    prior = PriorStudy(study1.study_instance_uid, study1.study_date, baseline.event,
                       lookback_candidates=baseline.lookback_candidates)
    follow_up = build_result(study2, _inference(second), Settings(), now=cases.NOW, prior=prior,
                             lung_centroid_mm=lung_centroid_mm(study2.datasets))
    return baseline, follow_up


def test_look_back_candidates_are_never_findings():
    baseline, follow_up = _looked_back()
    assert len(baseline.lookback_candidates) == 3
    assert [f.mean_diameter_mm for f in baseline.event.findings] == [7.0]  # only the reported nodule
    assert baseline.event.category.lung_rads == "3" and not baseline.event.needs_human_review
    text = baseline.event.model_dump_json()
    assert all(f"{c.center_mm[0]}" not in text for c in baseline.lookback_candidates)
    assert len(follow_up.event.findings) == 3  # the current nodules, nothing of the prior's candidates


def test_a_nodule_unreported_on_the_prior_is_measured_against_its_look_back_candidate():
    baseline, follow_up = _looked_back()
    event = follow_up.event
    stable, grown, new = event.findings
    reported_before = {f.tracking_uid for f in baseline.event.findings}
    # grown 9 -> 13 mm in 400 days, seen in retrospect on the prior: growing, not new
    assert grown.growing is True and grown.lung_rads == "4B" and seen_in_retrospect(grown)
    assert grown.diameter_change_mm == pytest.approx(4.0, abs=0.1) and 150 < grown.volume_doubling_time_days < 300
    assert grown.prior_tracking_uid is None and grown.tracking_uid not in reported_before
    # stable 10 mm: a stable 4A at follow-up is 3 (new, it would have been 4B)
    assert stable.growing is False and stable.lung_rads == "3" and seen_in_retrospect(stable)
    assert abs(stable.diameter_change_mm) <= 0.5 and stable.prior_tracking_uid is None
    # the new 6.5 mm nodule: no candidate near it (the unrelated one lies 60 mm away) -> still new, 4A
    assert new.lung_rads == "4A" and not seen_in_retrospect(new)
    assert new.diameter_change_mm is None and new.growing is None
    retrospect = [r for r in event.review_reasons if "seen in retrospect" in r]
    assert [r.split(" seen")[0] for r in retrospect] == ["nodule 1", "nodule 2"]
    assert "score 0.31, 9.0 mm then" in retrospect[1] and event.needs_human_review
    assert event.category.lung_rads == "4B"


def test_follow_up_sr_says_a_nodule_was_seen_in_retrospect(tmp_path: Path):
    _, follow_up = _looked_back()
    path = tmp_path / "sr.dcm"
    follow_up.sr.save_as(path, enforce_file_format=True)
    assert dicom_tools.dciodvfy_errors(path) == []
    ds = dcmread(path)
    (summary,) = [item.TextValue for item in _items(ds)
                  if "TextValue" in item and item.ConceptNameCodeSequence[0].CodeValue == codes.DESCRIPTION_OF_CHANGE.value]
    assert "nodule 2 growing (+4.0 mm" in summary and "seen in retrospect on the prior below the reporting" in summary
    assert "nodule 3 new" in summary and "prior nodule(s) not seen" in summary  # the reported 7 mm one resolved
    seen = [item for item in _items(ds) if item.get("ValueType") == "CODE"
            and item.ConceptNameCodeSequence[0].CodeValue == codes.SEEN_ON_PRIOR.value]
    assert len(seen) == 2 and all(item.ConceptCodeSequence[0].CodeValue == codes.SEEN_IN_RETROSPECT.value
                                  for item in seen)
    # read back from the PACS as a later round's prior: its nodules (an SR keeps no look-back candidates)
    from postprocess.sr_readback import lung_nodule_report_event

    assert len(lung_nodule_report_event(ds).findings) == 3


def test_mammography_prior_scores_and_new_findings():
    study = cases.mammo_study()
    prior_inference = cases.mammo_inference(study, exam_probability=0.2)
    # the prior exam showed the same lesions except the first region, which is new now
    first_view = next(v for v in prior_inference.views if v.regions)
    first_view.regions = []
    prior_event = build_result(study, prior_inference, Settings(), now=cases.NOW).event
    prior = PriorStudy("1.2.3.4.5", dt.date(2023, 1, 2), prior_event.model_copy(
        update={"study_instance_uid": "1.2.3.4.5"}))
    event = build_result(study, cases.mammo_inference(study, exam_probability=0.9), Settings(),
                         now=cases.NOW, prior=prior).event
    assert event.category.compared_with_prior
    assert event.category.prior_exam_score == prior_event.category.exam_score < event.category.exam_score
    assert event.prior_study_instance_uid == "1.2.3.4.5"
    flags = {(f.sop_instance_uid, f.new_since_prior) for f in event.findings}
    assert (first_view.sop_instance_uid, True) in flags
    assert all(new == (sop == first_view.sop_instance_uid) for sop, new in flags)
    assert not any(isinstance(f, NoduleFinding) for f in event.findings)


@pytest.mark.skipif(not dicom_tools.sr_validator_available(), reason="PixelMed's DicomSRValidator is not installed")
@pytest.mark.parametrize("case", ["matched", "seen-in-retrospect"])
def test_follow_up_sr_validates_against_its_templates(tmp_path: Path, case: str):
    # PixelMed checks TID 1500 row by row, the comparison items added at a follow-up included (about 10 s)
    path = tmp_path / "sr.dcm"
    (_rounds()[3] if case == "matched" else _looked_back()[1]).sr.save_as(path, enforce_file_format=True)
    assert dicom_tools.sr_validator_errors(path) == []
