"""The committed JSON Schema of TriageEvent (docs/triage_event.schema.json) is the model's schema."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from oncostream.contracts import SCHEMA_VERSION, LungRadsCategory, NoduleFinding, TriageEvent, read_triage_event
from oncostream.streaming import TRIAGE_SCHEMA_PATH, triage_event_schema_text


def test_committed_schema_equals_model_schema():
    assert TRIAGE_SCHEMA_PATH.read_text() == triage_event_schema_text(), (
        "docs/triage_event.schema.json is stale: regenerate with "
        "`.venv/bin/python -m oncostream.streaming schema > docs/triage_event.schema.json`")


def test_schema_names_the_contract_fields():
    schema = json.loads(TRIAGE_SCHEMA_PATH.read_text())
    for name in ("schema_version", "study_instance_uid", "accession_number", "program", "modality", "priority",
                 "category", "findings", "confidence", "needs_human_review", "incomplete", "missing",
                 "model_versions", "sr_sop_instance_uid", "seg_sop_instance_uids", "arrived_at", "triaged_at"):
        assert name in schema["properties"], name
    assert schema["properties"]["schema_version"]["const"] == "1.2"


def _event() -> TriageEvent:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    return TriageEvent(study_instance_uid="1.2.3", program="p", modality="CT", priority="HIGH",
                        category=LungRadsCategory(lung_rads="4A"),
                        findings=[NoduleFinding(center_mm=(1.0, 2.0, 3.0), mean_diameter_mm=9.0, long_axis_mm=10.0,
                                                volume_mm3=380.0, composition="solid", malignancy_probability=0.3,
                                                lung_rads="4A", tracking_uid="1.2.3.4")],
                        confidence=0.8, needs_human_review=False, model_versions={"ldct": "1"},
                        sr_sop_instance_uid="1.2.3.5", arrived_at=at, triaged_at=at)


def test_an_event_round_trips_through_its_json():
    event = _event()
    assert TriageEvent.model_validate_json(event.model_dump_json()) == event
    assert read_triage_event(event.model_dump_json()) == event


# what each earlier version lacked (fields added since, all with defaults)
ADDED_SINCE = {"1.1": ("prior_study_instance_uid", "prior_interval_days"),
               "1.0": ("prior_study_instance_uid", "prior_interval_days", "review_reasons", "series_instance_uid",
                       "skipped_series")}


@pytest.mark.parametrize("version", sorted(ADDED_SINCE))
def test_an_event_stored_under_an_earlier_version_reads_as_the_current_one(version):
    """The results store keeps events for years: an event of an earlier 1.x schema still reads."""
    raw = json.loads(_event().model_dump_json())
    for name in ADDED_SINCE[version]:
        del raw[name]
    for finding in raw["findings"]:  # the nodule change fields came with 1.2 too
        for name in ("prior_tracking_uid", "diameter_change_mm", "volume_change_percent",
                     "volume_doubling_time_days", "growing"):
            del finding[name]
    del raw["category"]["compared_with_prior"]
    raw["schema_version"] = version
    event = read_triage_event(json.dumps(raw))
    assert event.schema_version == SCHEMA_VERSION
    assert event.prior_study_instance_uid is None and not event.category.compared_with_prior
    assert event.findings[0].tracking_uid == "1.2.3.4"


@pytest.mark.parametrize("version", ["2.0", None, "9"])
def test_an_event_of_a_version_this_code_does_not_read_is_refused_by_name(version):
    raw = json.loads(_event().model_dump_json())
    raw["schema_version"] = version
    with pytest.raises(ValueError, match="schema_version"):
        read_triage_event(json.dumps(raw))
