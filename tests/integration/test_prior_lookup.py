"""Priors from the PACS: C-FIND by the study's PatientID on the real Orthanc, C-GET of the prior's oncostream
SR, read back into the PriorStudy the follow-up rules compare with (oncostream/app/priors.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from oncostream.app.priors import PacsPriorQuery, PriorLookup
from oncostream.settings import Settings
from oncostream.study import PriorStudy
from postprocess.pacs_sink import PacsSink
from postprocess.results import build_result
from tests.unit import screening_cases as cases
from tests.unit.test_followup import _inference, _rounds

pytestmark = pytest.mark.integration


def _query(orthanc) -> PacsPriorQuery:
    return PacsPriorQuery.from_address(orthanc.env["ORTHANC_DICOM"], called_ae=orthanc.extra["ae_title"])


def _deliver(orthanc, result) -> None:
    """The prior's SR (and SEG) into the PACS by C-STORE, as the pipeline delivers them."""
    sink = PacsSink.from_address(orthanc.env["ORTHANC_DICOM"], called_ae=orthanc.extra["ae_title"])
    sink.add(result)
    sink.flush()


def test_prior_ldct_found_through_the_pacs_and_compared(orthanc_empty):
    first, second, baseline, expected, study2 = _rounds()
    _deliver(orthanc_empty, baseline)
    (prior,) = _query(orthanc_empty).priors(study2)
    assert prior.study_instance_uid == baseline.event.study_instance_uid
    assert prior.study_date == dt.date(2024, 3, 4)
    assert prior.event.lung_centroid_mm == baseline.event.lung_centroid_mm
    assert [(f.tracking_uid, f.center_mm, f.mean_diameter_mm, f.volume_mm3, f.lung_rads) for f in prior.event.findings] \
        == [(f.tracking_uid, f.center_mm, f.mean_diameter_mm, f.volume_mm3, f.lung_rads) for f in baseline.event.findings]
    # compared with the prior read back from the PACS: the same follow-up as with the event itself
    event = build_result(study2, _inference(second), Settings(), now=cases.NOW, prior=prior,
                         lung_centroid_mm=expected.event.lung_centroid_mm).event
    assert [(f.lung_rads, f.tracking_uid, f.diameter_change_mm) for f in event.findings] == \
        [(f.lung_rads, f.tracking_uid, f.diameter_change_mm) for f in expected.event.findings]


def test_no_prior_for_another_patient_or_a_later_study(orthanc_empty):
    first, second, baseline, _, study2 = _rounds()
    _deliver(orthanc_empty, baseline)
    other = cases.ldct_study(seed=8)
    assert _query(orthanc_empty).priors(other) == []  # another PatientID
    study1 = baseline.study
    assert _query(orthanc_empty).priors(study1) == []  # the study itself is not its own prior


def test_store_first_then_pacs_and_a_failing_pacs_does_not_fail_the_study(orthanc_empty):
    _, _, baseline, _, study2 = _rounds()

    class Store:
        def __init__(self, found):
            self.found, self.asked = found, []

        def priors(self, patient_key, modality, before, exclude_study_uid):
            self.asked.append((patient_key, modality, before, exclude_study_uid))
            return self.found

    in_store = PriorStudy(baseline.event.study_instance_uid, dt.date(2024, 3, 4), baseline.event)
    study2.patient_key = "k" * 64
    store = Store([in_store])
    assert PriorLookup(store=store, pacs=_query(orthanc_empty)).find(study2) == (in_store, None)
    assert store.asked == [("k" * 64, "CT", study2.study_date, study2.study_instance_uid)]
    # nothing in the store, nothing in the PACS
    assert PriorLookup(store=Store([]), pacs=_query(orthanc_empty)).find(study2) == (None, None)
    # a PACS that does not answer: no prior, and the reason for the reader
    dead = PacsPriorQuery("127.0.0.1", 9, timeout_s=2.0)
    prior, problem = PriorLookup(store=Store([]), pacs=dead).find(study2)
    assert prior is None and "could not be looked up" in problem
