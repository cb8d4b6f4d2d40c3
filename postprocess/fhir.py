"""FHIR R4 rendering of a TriageEvent: one transaction Bundle holding a DiagnosticReport and its Observations.

http://hl7.org/fhir/R4/diagnosticreport.html, http://hl7.org/fhir/R4/observation.html. The report is
``preliminary`` (an AI triage, not a signed read) and refers to the study by its DICOM UID
(``urn:dicom:uid`` / ``urn:oid:``); each Observation carries one result: the triage priority, the
Lung-RADS category or the mammography exam score, BI-RADS density, exam malignancy probability and recall,
and one Observation per finding (per nodule: its tracking UID as identifier, size, volume, composition,
probability, category and, at follow-up, its change since the prior). Codes come from postprocess/codes.py
(SNOMED CT, DICOM, UCUM and the local scheme), their FHIR system URIs from ``_SYSTEMS``.

Entries are conditional updates (``PUT Observation?identifier=...``) and every fullUrl is a UUID derived
from the output UIDs, so a replayed study updates the same resources instead of adding copies. The Bundle
is validated by fhir.resources' R4B models (FHIR 4.3, whose DiagnosticReport, Observation and Bundle have
the same elements as R4 4.0.1 for everything written here): structure, data types, required elements.
No patient appears unless the program allows identifiers (then ``subject`` names the PatientID).
"""

from __future__ import annotations

import uuid
from typing import Any

from pydicom.sr.coding import Code

from oncostream.contracts import LungRadsCategory, MammoCategory, MammoFinding, NoduleFinding, TriageEvent
from oncostream.errors import OncostreamError
from postprocess import codes

FHIR_JSON = "application/fhir+json"
DICOM_UID_SYSTEM = "urn:dicom:uid"
OBSERVATION_ID_SYSTEM = "urn:oncostream:observation"  # "<report UID>/<key>", unique per result
_SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
    "LN": "http://loinc.org",
    "UMLS": "http://www.nlm.nih.gov/research/umls",
    codes.LOCAL_SCHEME: "urn:oncostream:codes",
}
_RADIOLOGY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                          "display": "Radiology"}]}
_IMAGING = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging",
                        "display": "Imaging"}]}
_UID_NAMESPACE = uuid.UUID("3d5c1f0e-6b8a-5f43-9a61-0f2e7c4b9d21")  # fullUrls: uuid5 of identifiers in it


class FhirRenderingError(OncostreamError):
    """A TriageEvent did not make a valid FHIR Bundle (a bug, never the input's fault): ``problems`` says why."""

    def __init__(self, study_instance_uid: str, problems: str):
        self.study_instance_uid = study_instance_uid
        self.problems = problems
        super().__init__(f"FHIR rendering of study {study_instance_uid}: {problems}")


def _concept(code: Code) -> dict:
    system = _SYSTEMS.get(code.scheme_designator)
    if system is None:
        raise ValueError(f"code: no FHIR system for coding scheme {code.scheme_designator!r}")
    return {"coding": [{"system": system, "code": code.value, "display": code.meaning}], "text": code.meaning}


def _quantity(value: float, unit: Code) -> dict:
    return {"value": round(float(value), 4), "unit": unit.meaning, "system": _SYSTEMS["UCUM"], "code": unit.value}


def _uid_identifier(uid: str) -> dict:
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}


def _full_url(system: str, value: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_UID_NAMESPACE, f'{system}|{value}')}"


def _component(code: Code, **value: Any) -> dict:
    return {"code": _concept(code), **value}


class _Observations:
    """Collects a report's Observations with identifiers ``<report UID>/<key>``."""

    def __init__(self, event: TriageEvent, report_uid: str):
        self.event = event
        self.report_uid = report_uid
        self.entries: list[dict] = []

    def add(self, key: str, code: Code, value: dict | None = None, components: list[dict] | None = None,
            body_site: Code | None = None, identifiers: list[dict] | None = None) -> None:
        own = {"system": OBSERVATION_ID_SYSTEM, "value": f"{self.report_uid}/{key}"}
        resource = {
            "resourceType": "Observation",
            "identifier": [own, *(identifiers or [])],
            "status": "preliminary",
            "category": [_IMAGING],
            "code": _concept(code),
            "effectiveDateTime": self.event.arrived_at.isoformat(),
            "issued": self.event.triaged_at.isoformat(),
            **(value or {}),
        }
        if self.event.patient_id:
            resource["subject"] = {"identifier": {"value": self.event.patient_id}}
        if body_site is not None:
            resource["bodySite"] = _concept(body_site)
        if components:
            resource["component"] = components
        self.entries.append(_entry(resource, own))


def _entry(resource: dict, identifier: dict) -> dict:
    return {"fullUrl": _full_url(identifier["system"], identifier["value"]), "resource": resource,
            "request": {"method": "PUT",
                        "url": f"{resource['resourceType']}?identifier={identifier['system']}|{identifier['value']}"}}


def _nodule(observations: _Observations, index: int, f: NoduleFinding, compared: bool) -> None:
    components = [
        _component(codes.DIAMETER, valueQuantity=_quantity(f.mean_diameter_mm, codes.UNIT_MM)),
        _component(codes.LONG_AXIS, valueQuantity=_quantity(f.long_axis_mm, codes.UNIT_MM)),
        _component(codes.VOLUME, valueQuantity=_quantity(f.volume_mm3, codes.UNIT_MM3)),
        _component(codes.NODULE_COMPOSITION, valueCodeableConcept=_concept(codes.COMPOSITION_CODES[f.composition])),
        _component(codes.PROBABILITY_OF_CANCER, valueQuantity=_quantity(f.malignancy_probability,
                                                                        codes.UNIT_NO_UNITS)),
        _component(codes.LUNG_RADS_ASSESSMENT, valueCodeableConcept=_concept(codes.LUNG_RADS_CODES[f.lung_rads])),
        _component(codes.CENTER, valueString="LPS mm " + ", ".join(f"{c:.1f}" for c in f.center_mm)),
    ]
    if compared:
        change = "new" if not f.prior_tracking_uid else ("growing" if f.growing else "stable")
        components.append(_component(codes.INTERVAL_CHANGE,
                                     valueCodeableConcept=_concept(codes.INTERVAL_CHANGE_CODES[change])))
    for code, value, unit in ((codes.DIAMETER_CHANGE, f.diameter_change_mm, codes.UNIT_MM),
                              (codes.VOLUME_CHANGE, f.volume_change_percent, codes.UNIT_PERCENT),
                              (codes.VOLUME_DOUBLING_TIME, f.volume_doubling_time_days, codes.UNIT_DAY)):
        if value is not None:
            components.append(_component(code, valueQuantity=_quantity(value, unit)))
    identifiers = [_uid_identifier(f.tracking_uid)]  # the same nodule keeps it from round to round
    observations.add(f"nodule-{index}", codes.NODULE, components=components, body_site=codes.LUNG,
                     identifiers=identifiers)


def _mammo_finding(observations: _Observations, index: int, f: MammoFinding) -> None:
    components = [
        _component(codes.IMAGE_VIEW, valueCodeableConcept=_concept(codes.VIEW_CODES[f.view])),
        _component(codes.CERTAINTY_OF_FINDING, valueQuantity=_quantity(f.score, codes.UNIT_NO_UNITS)),
        _component(codes.SOURCE, valueString=f"urn:oid:{f.sop_instance_uid}"),
        _component(codes.CENTER, valueString=f"row {f.center_px[0]}, column {f.center_px[1]}"),
    ]
    if f.new_since_prior is not None:
        change = "new" if f.new_since_prior else "stable"
        components.append(_component(codes.INTERVAL_CHANGE,
                                     valueCodeableConcept=_concept(codes.INTERVAL_CHANGE_CODES[change])))
    observations.add(f"finding-{index}", codes.MAMMO_FINDING_CODES[f.type], components=components,
                     body_site=codes.LATERALITY_CODES[f.laterality])


def _conclusion(event: TriageEvent) -> str:
    category = event.category
    if isinstance(category, LungRadsCategory):
        text = f"Lung-RADS v2022 {category.lung_rads}"
    else:
        text = (f"exam score {category.exam_score}/10, BI-RADS density {category.density}, "
                f"malignancy probability {category.malignancy_probability:.2f}"
                + (", recall suggested" if category.recall else ""))
    text += f"; triage priority {event.priority}"
    if event.prior_study_instance_uid:
        text += f"; compared with prior study {event.prior_study_instance_uid}"
    if event.needs_human_review:
        text += "; needs human review" + (f" ({'; '.join(event.review_reasons)})" if event.review_reasons else "")
    if event.incomplete:
        text += "; incomplete study" + (f" (missing {', '.join(event.missing)})" if event.missing else "")
    return text + ". Research use only: oncostream reference models, not for clinical use."


def render_bundle(event: TriageEvent) -> dict:
    """The transaction Bundle (JSON-ready dict) of one event, validated; raises FhirRenderingError."""
    if not isinstance(event, TriageEvent):
        raise TypeError(f"event: want a TriageEvent, got {type(event).__name__}")
    report_uid = event.sr_sop_instance_uid or event.study_instance_uid
    observations = _Observations(event, report_uid)
    observations.add("priority", codes.TRIAGE_PRIORITY,
                     {"valueCodeableConcept": {"coding": [{"system": _SYSTEMS[codes.LOCAL_SCHEME],
                                                           "code": event.priority}], "text": event.priority}})
    category = event.category
    if isinstance(category, LungRadsCategory):
        observations.add("lung-rads", codes.LUNG_RADS_ASSESSMENT,
                         {"valueCodeableConcept": _concept(codes.LUNG_RADS_CODES[category.lung_rads])})
    elif isinstance(category, MammoCategory):
        observations.add("exam-score", codes.EXAM_SCORE, {"valueInteger": category.exam_score})
        observations.add("density", codes.BREAST_COMPOSITION,
                         {"valueCodeableConcept": _concept(codes.DENSITY_CODES[category.density])})
        observations.add("malignancy-probability", codes.PROBABILITY_OF_CANCER,
                         {"valueQuantity": _quantity(category.malignancy_probability, codes.UNIT_NO_UNITS)})
        observations.add("follow-up", codes.RECOMMENDED_FOLLOW_UP,
                         {"valueCodeableConcept": _concept(codes.FOLLOW_UP_RECALL if category.recall
                                                           else codes.FOLLOW_UP_ROUTINE)})
    compared = bool(getattr(category, "compared_with_prior", False))
    for index, finding in enumerate(event.findings):
        if isinstance(finding, NoduleFinding):
            _nodule(observations, index, finding, compared)
        else:
            _mammo_finding(observations, index, finding)

    report_identifier = _uid_identifier(report_uid)
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [report_identifier],
        "status": "preliminary",
        "category": [_RADIOLOGY],
        "code": _concept(codes.IMAGING_MEASUREMENT_REPORT if event.modality == "CT"
                         else codes.MAMMOGRAPHY_CAD_REPORT),
        "effectiveDateTime": event.arrived_at.isoformat(),
        "issued": event.triaged_at.isoformat(),
        "imagingStudy": [{"identifier": _uid_identifier(event.study_instance_uid), "type": "ImagingStudy"}],
        "result": [{"reference": e["fullUrl"], "type": "Observation"} for e in observations.entries],
        "conclusion": _conclusion(event),
    }
    if event.patient_id:
        report["subject"] = {"identifier": {"value": event.patient_id}}
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [_entry(report, report_identifier), *observations.entries]}
    validate_bundle(bundle, event.study_instance_uid)
    return bundle


def validate_bundle(bundle: dict, study_instance_uid: str = "?") -> None:
    """Parse ``bundle`` with fhir.resources' R4B models (structure, types, required elements)."""
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        raise FhirRenderingError(study_instance_uid, f"{exc.error_count()} problems: {exc}") from exc
