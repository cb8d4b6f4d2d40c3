"""Triaged studies for the results-store, worklist and FHIR tests: real TriageEvents and StudyResults with
DICOM headers that carry patient identifiers, so tests can show that none of them is stored or shown."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from pydicom import Dataset
from pydicom.uid import UID

from oncostream.contracts import LungRadsCategory, MammoCategory, MammoFinding, NoduleFinding, TriageEvent
from oncostream.study import Study, StudyResult

# identifiers written into every header below; none may reach the store, the page or a FHIR resource
PATIENT_ID = "PAT-7734-SECRET"
PATIENT_NAME = "Kowalska^Zofia"
ACCESSION = "ACC-55120-SECRET"
ISSUER = "HOSPITAL-SECRET-ISSUER"
IDENTIFIERS = (PATIENT_ID, "Kowalska", "Zofia", ACCESSION, ISSUER)

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)


def _header(study_uid: str, sop_uid: str, sop_class: str, study_date: date | None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.StudyInstanceUID = UID(study_uid)
    ds.SeriesInstanceUID = UID(sop_uid + ".1")
    ds.PatientID = PATIENT_ID
    ds.PatientName = PATIENT_NAME
    ds.IssuerOfPatientID = ISSUER
    ds.AccessionNumber = ACCESSION
    ds.StudyDate = study_date.strftime("%Y%m%d") if study_date else ""
    return ds


def nodule(index: int, diameter: float, lung_rads: str, probability: float = 0.2) -> NoduleFinding:
    return NoduleFinding(center_mm=(-40.0 + index, 12.5, -150.0 - 3 * index), mean_diameter_mm=diameter,
                         long_axis_mm=diameter * 1.2, volume_mm3=round(3.14159 / 6 * diameter ** 3, 1),
                         composition="solid", malignancy_probability=probability, lung_rads=lung_rads,
                         tracking_uid=f"2.25.{9000 + index}")


def ct_result(study_uid: str, priority: str = "HIGH", lung_rads: str = "4A", patient_key: str | None = "pk-1",
              study_date: date | None = date(2026, 11, 2), arrived: datetime = T0, nodules: int = 2,
              patient_id: str | None = None, prior: str | None = None) -> StudyResult:
    """``prior``: a follow-up compared with that study: the first nodule grew 2 mm, the others are new."""
    findings = [nodule(i, 9.0 + 2 * i, lung_rads, 0.2 + 0.1 * i) for i in range(nodules)]
    if prior and findings:
        findings[0] = findings[0].model_copy(update={
            "prior_tracking_uid": findings[0].tracking_uid, "diameter_change_mm": 2.0,
            "volume_change_percent": 85.0, "volume_doubling_time_days": 412.0, "growing": True})
    sr_uid, seg_uid = f"{study_uid}.901", f"{study_uid}.902"
    event = TriageEvent(study_instance_uid=study_uid, accession_number=ACCESSION, program="default", modality="CT",
                        priority=priority, category=LungRadsCategory(lung_rads=lung_rads,
                                                                     compared_with_prior=prior is not None),
                        findings=findings, confidence=0.9, needs_human_review=False,
                        model_versions={"ldct_detector": "1.0"}, sr_sop_instance_uid=sr_uid,
                        seg_sop_instance_uids=[seg_uid], arrived_at=arrived,
                        triaged_at=arrived + timedelta(seconds=4), patient_id=patient_id,
                        prior_study_instance_uid=prior, prior_interval_days=371 if prior else None)
    image = _header(study_uid, f"{study_uid}.1", "1.2.840.10008.5.1.4.1.1.2", study_date)
    study = Study(study_instance_uid=study_uid, modality="CT", datasets=[image], arrived_at=arrived,
                  patient_key=patient_key)
    return StudyResult(study=study, event=event, sr=_header(study_uid, sr_uid, SR_CLASS, study_date),
                       segs=[_header(study_uid, seg_uid, SEG_CLASS, study_date)])


def mg_result(study_uid: str, priority: str = "ROUTINE", exam_score: int = 4, patient_key: str | None = "pk-2",
              study_date: date | None = date(2026, 11, 3), arrived: datetime = T0) -> StudyResult:
    findings = [MammoFinding(type="mass", laterality="L", view=view, sop_instance_uid=f"{study_uid}.{i + 1}",
                             center_px=(400, 300), bbox_px=(380, 280, 420, 320), score=0.3 + 0.1 * i)
                for i, view in enumerate(("CC", "MLO"))]
    sr_uid = f"{study_uid}.901"
    event = TriageEvent(study_instance_uid=study_uid, accession_number=ACCESSION, program="default", modality="MG",
                        priority=priority,
                        category=MammoCategory(exam_score=exam_score, density="c", malignancy_probability=0.12,
                                               recall=exam_score >= 8),
                        findings=findings, confidence=0.8, needs_human_review=False,
                        model_versions={"mammo_classifier": "1.0"}, sr_sop_instance_uid=sr_uid,
                        arrived_at=arrived, triaged_at=arrived + timedelta(seconds=1))
    images = [_header(study_uid, f"{study_uid}.{i + 1}", "1.2.840.10008.5.1.4.1.1.1.2", study_date) for i in range(4)]
    study = Study(study_instance_uid=study_uid, modality="MG", datasets=images, arrived_at=arrived,
                  patient_key=patient_key)
    return StudyResult(study=study, event=event, sr=_header(study_uid, sr_uid, SR_CLASS, study_date))
