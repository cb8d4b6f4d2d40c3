"""Our own SRs read back into a TriageEvent: how a prior exam found only in the PACS (its oncostream SR
retrieved) becomes a ``PriorStudy`` the follow-up rules can compare with.

Reads what postprocess/sr.py writes (TID 1500 LDCT measurement report, TID 4000 Mammography CAD SR):
findings with their measurements, categories and tracking UIDs, the lung-field centroid. An SR does
not carry everything a TriageEvent does: ``priority`` is recomputed from the category by the
program's policy, ``confidence`` reads 0 and ``needs_human_review`` true (not stated in the SR:
the conservative value), times are the SR's content date/time. Only findings, categories, the
centroid and dates are used by the comparison. Anything else raises ``SrReadError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import numpy as np
from pydicom import Dataset

from oncostream.contracts import (
    LungRadsCategory,
    MammoCategory,
    MammoFinding,
    NoduleFinding,
    TriageEvent,
)
from oncostream.errors import OncostreamError
from postprocess import codes
from postprocess.priority import ldct_priority, load_program, mammo_priority

_TRACKING_UID = "112040"
_MEASUREMENT_GROUP = "125007"


class SrReadError(OncostreamError):
    """The object is not an oncostream SR this reader understands; ``detail`` says why."""


def _code(item: Dataset, attribute: str = "ConceptNameCodeSequence") -> tuple[str, str] | None:
    seq = item.get(attribute)
    if not seq:
        return None
    return str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator)


def _is(item: Dataset, code) -> bool:
    return _code(item) == (code.value, code.scheme_designator)


def _walk(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from _walk(child)


def _num(item: Dataset) -> float:
    return float(item.MeasuredValueSequence[0].NumericValue)


def _reverse(table: dict) -> dict[tuple[str, str], str]:
    return {(c.value, c.scheme_designator): k for k, c in table.items()}


def _when(ds: Dataset) -> datetime:
    date, time = str(ds.get("ContentDate", "19700101")), str(ds.get("ContentTime", "000000")).split(".")[0]
    return datetime.strptime(date + time.ljust(6, "0")[:6], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)


def _model_versions(ds: Dataset) -> dict[str, str]:
    versions = {}
    for item in _walk(ds):
        if item.get("ValueType") == "TEXT" and "=" in str(item.get("TextValue", "")) and _code(item) == (
                "111002", "DCM"):  # Algorithm Parameters: "name=version"
            name, _, version = str(item.TextValue).partition("=")
            versions[name] = version
    return versions or {"unknown": "unknown"}


def lung_nodule_report_event(ds: Dataset, program: str = "default") -> TriageEvent:
    """A TriageEvent from an LDCT measurement report written by lung_nodule_report (TID 1500)."""
    if str(ds.get("Manufacturer", "")) != codes.MANUFACTURER or str(ds.get("Modality", "")) != "SR":
        raise SrReadError("not an oncostream SR")
    compositions, categories = _reverse(codes.COMPOSITION_CODES), _reverse(codes.LUNG_RADS_CODES)
    findings, exam_category, centroid = [], None, None
    for item in _walk(ds):
        if _is(item, codes.QUALITATIVE_EVALUATIONS) and item.get("ValueType") == "CONTAINER":
            for child in item.get("ContentSequence", []):
                if _is(child, codes.LUNG_RADS_ASSESSMENT):
                    exam_category = categories.get(_code(child, "ConceptCodeSequence"))
                elif _is(child, codes.LUNG_FIELD_CENTROID):
                    centroid = tuple(round(float(v), 2) for v in child.GraphicData[:3])
        if _code(item) != (_MEASUREMENT_GROUP, "DCM"):
            continue
        values: dict = {}
        for child in item.get("ContentSequence", []):
            name = _code(child)
            kind = child.get("ValueType")
            if name == (_TRACKING_UID, "DCM"):
                values["tracking_uid"] = str(child.UID)
            elif kind == "SCOORD3D" and child.get("GraphicType") == "ELLIPSE":
                points = np.asarray(child.GraphicData, float).reshape(-1, 3)
                values["center_mm"] = tuple(round(float(v), 2) for v in points.mean(axis=0))
            elif kind == "NUM":
                for key, code in (("long_axis_mm", codes.LONG_AXIS), ("mean_diameter_mm", codes.DIAMETER),
                                  ("volume_mm3", codes.VOLUME), ("malignancy_probability", codes.PROBABILITY_OF_CANCER)):
                    if _is(child, code):
                        values[key] = _num(child)
            elif kind == "CODE" and _is(child, codes.NODULE_COMPOSITION):
                values["composition"] = compositions.get(_code(child, "ConceptCodeSequence"))
            elif kind == "CODE" and _is(child, codes.LUNG_RADS_ASSESSMENT):
                values["lung_rads"] = categories.get(_code(child, "ConceptCodeSequence"))
        if "tracking_uid" in values and "center_mm" in values:
            try:
                findings.append(NoduleFinding(**values))
            except ValueError as exc:
                raise SrReadError(f"nodule group: {exc}") from exc
    if exam_category is None:
        raise SrReadError("no exam-level Lung-RADS category")
    category = LungRadsCategory(lung_rads=exam_category)
    when = _when(ds)
    return TriageEvent(
        study_instance_uid=str(ds.StudyInstanceUID), accession_number=str(ds.get("AccessionNumber", "")) or None,
        program=program, modality="CT", priority=ldct_priority(exam_category, load_program(program)),
        category=category, findings=findings, confidence=0.0, needs_human_review=True,
        model_versions=_model_versions(ds), sr_sop_instance_uid=str(ds.SOPInstanceUID),
        arrived_at=when, triaged_at=when, lung_centroid_mm=centroid)


def mammography_cad_event(ds: Dataset, program: str = "default") -> TriageEvent:
    """A TriageEvent from a Mammography CAD SR written by MammographyCadSR (TID 4000)."""
    if str(ds.get("Manufacturer", "")) != codes.MANUFACTURER or str(ds.get("Modality", "")) != "SR":
        raise SrReadError("not an oncostream SR")
    types, densities = _reverse(codes.MAMMO_FINDING_CODES), _reverse(codes.DENSITY_CODES)
    lateralities, views = _reverse(codes.LATERALITY_CODES), _reverse(codes.VIEW_CODES)
    image_of: dict[str, tuple[str, str]] = {}
    findings, score, probability, density, recall = [], None, None, None, False
    for item in _walk(ds):
        if _is(item, codes.IMAGE_LIBRARY):
            for entry in item.get("ContentSequence", []):
                sop = str(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                side = view = None
                for child in entry.get("ContentSequence", []):
                    if _is(child, codes.IMAGE_LATERALITY):
                        side = lateralities.get(_code(child, "ConceptCodeSequence"))
                    elif _is(child, codes.IMAGE_VIEW):
                        view = views.get(_code(child, "ConceptCodeSequence"))
                if side and view:
                    image_of[sop] = (side, view)
        elif _is(item, codes.EXAM_SCORE):
            score = int(round(_num(item)))
        elif _is(item, codes.PROBABILITY_OF_CANCER) and probability is None and item.get("ValueType") == "NUM":
            probability = _num(item) / 100.0
        elif _is(item, codes.RECOMMENDED_FOLLOW_UP):
            recall = _code(item, "ConceptCodeSequence") == (codes.FOLLOW_UP_RECALL.value,
                                                            codes.FOLLOW_UP_RECALL.scheme_designator)
        elif _is(item, codes.BREAST_COMPOSITION) and item.get("ValueType") == "CODE" and \
                _code(item, "ConceptCodeSequence") in densities:
            density = densities[_code(item, "ConceptCodeSequence")]
        elif _is(item, codes.SINGLE_IMAGE_FINDING) and _code(item, "ConceptCodeSequence") in types:
            values = {"type": types[_code(item, "ConceptCodeSequence")]}
            for child in item.get("ContentSequence", []):
                if _is(child, codes.CERTAINTY_OF_FINDING):
                    values["score"] = round(_num(child) / 100.0, 4)
                elif _is(child, codes.CENTER):
                    col, row = (float(v) for v in child.GraphicData[:2])
                    values["center_px"] = (int(round(row - 0.5)), int(round(col - 0.5)))
                    values["sop_instance_uid"] = str(
                        child.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                elif _is(child, codes.OUTLINE):
                    points = np.asarray(child.GraphicData, float).reshape(-1, 2)
                    values["bbox_px"] = (int(points[:, 1].min()), int(points[:, 0].min()),
                                         int(points[:, 1].max()), int(points[:, 0].max()))
            side_view = image_of.get(values.get("sop_instance_uid", ""))
            if side_view is None:
                raise SrReadError("a finding on an image outside the image library")
            findings.append(MammoFinding(laterality=side_view[0], view=side_view[1], **values))
    if score is None or probability is None or density is None:
        raise SrReadError("no exam score, probability or breast composition")
    category = MammoCategory(exam_score=score, density=density, malignancy_probability=min(max(probability, 0), 1),
                             recall=recall)
    when = _when(ds)
    return TriageEvent(
        study_instance_uid=str(ds.StudyInstanceUID), accession_number=str(ds.get("AccessionNumber", "")) or None,
        program=program, modality="MG", priority=mammo_priority(score, load_program(program)), category=category,
        findings=findings, confidence=0.0, needs_human_review=True, model_versions=_model_versions(ds),
        sr_sop_instance_uid=str(ds.SOPInstanceUID), arrived_at=when, triaged_at=when)
