"""The committed JSON Schema of TriageEvent (docs/triage_event.schema.json) is the model's schema."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from oncostream.contracts import LungRadsCategory, NoduleFinding, TriageEvent
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


def test_an_event_round_trips_through_its_json():
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    event = TriageEvent(study_instance_uid="1.2.3", program="p", modality="CT", priority="HIGH",
                        category=LungRadsCategory(lung_rads="4A"),
                        findings=[NoduleFinding(center_mm=(1.0, 2.0, 3.0), mean_diameter_mm=9.0, long_axis_mm=10.0,
                                                volume_mm3=380.0, composition="solid", malignancy_probability=0.3,
                                                lung_rads="4A", tracking_uid="1.2.3.4")],
                        confidence=0.8, needs_human_review=False, model_versions={"ldct": "1"},
                        sr_sop_instance_uid="1.2.3.5", arrived_at=at, triaged_at=at)
    assert TriageEvent.model_validate_json(event.model_dump_json()) == event
