"""Contracts both sides speak (DESIGN.md, Contracts). Field names are read by other tools: keep them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.2"
# Versions whose events this code reads back (the results store keeps events for years): every 1.x
# change only added fields with defaults, so an older event reads as the current version with those
# fields at their defaults (no prior compared, no review reasons).
READABLE_SCHEMA_VERSIONS = ("1.0", "1.1", "1.2")

Priority = Literal["URGENT", "HIGH", "ROUTINE", "LOW"]
Modality = Literal["MG", "CT"]
Composition = Literal["solid", "part_solid", "ground_glass", "calcified"]
LungRads = Literal["0", "1", "2", "3", "4A", "4B", "4X"]
Density = Literal["a", "b", "c", "d"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoduleFinding(_Frozen):
    """One LDCT nodule; coordinates are DICOM patient coordinates (LPS, mm)."""

    type: Literal["nodule"] = "nodule"
    center_mm: tuple[float, float, float]
    mean_diameter_mm: float = Field(ge=0)
    long_axis_mm: float = Field(ge=0)
    volume_mm3: float = Field(ge=0)
    composition: Composition
    malignancy_probability: float = Field(ge=0, le=1)
    lung_rads: LungRads
    tracking_uid: str  # the same nodule keeps its tracking UID from round to round (TID 1500 tracking)
    # follow-up (1.2): the prior round's nodule this one is, and its change; all null for a new nodule
    # and at a baseline exam (no prior). A nodule the prior read did not report but that is visible there
    # in retrospect, below the detector's operating point, has its change and no prior_tracking_uid
    # (postprocess/followup.py seen_in_retrospect)
    prior_tracking_uid: str | None = None
    diameter_change_mm: float | None = None  # mean diameter now minus then
    volume_change_percent: float | None = None
    # interval x ln 2 / ln(V / V_prior); null too when the volume did not grow
    volume_doubling_time_days: float | None = Field(default=None, gt=0)
    growing: bool | None = None  # Lung-RADS v2022 growth: > 1.5 mm mean diameter within 12 months


class MammoFinding(_Frozen):
    """One mammography finding in the pixel grid of the image it was found on."""

    type: Literal["mass", "calcification", "region"]
    laterality: Literal["L", "R"]
    view: Literal["CC", "MLO"]
    sop_instance_uid: str
    center_px: tuple[int, int]
    bbox_px: tuple[int, int, int, int]
    score: float = Field(ge=0, le=1)
    new_since_prior: bool | None = None  # 1.2: no finding near it on the prior exam; null without a prior


Finding = Annotated[Union[NoduleFinding, MammoFinding], Field(union_mode="left_to_right")]


class LungRadsCategory(_Frozen):
    system: Literal["Lung-RADS v2022"] = "Lung-RADS v2022"
    lung_rads: LungRads
    compared_with_prior: bool = False  # 1.2: follow-up rules (a prior exam was found) or baseline rules


class MammoCategory(_Frozen):
    system: Literal["oncostream exam score + BI-RADS density"] = "oncostream exam score + BI-RADS density"
    exam_score: int = Field(ge=1, le=10)
    density: Density
    malignancy_probability: float = Field(ge=0, le=1)
    recall: bool
    compared_with_prior: bool = False  # 1.2: the prior exam's scores below, new findings flagged
    prior_exam_score: int | None = Field(default=None, ge=1, le=10)
    prior_malignancy_probability: float | None = Field(default=None, ge=0, le=1)


class TriageEvent(_Frozen):
    """Published to ``oncostream.triage`` (key StudyInstanceUID) and written to ``triage.jsonl``."""

    schema_version: Literal["1.2"] = SCHEMA_VERSION
    study_instance_uid: str
    accession_number: str | None = None
    program: str
    modality: Modality
    priority: Priority
    category: LungRadsCategory | MammoCategory
    findings: list[Finding]
    confidence: float = Field(ge=0, le=1)
    needs_human_review: bool
    review_reasons: list[str] = Field(default_factory=list)  # e.g. "LCC: breast implant"; 1.1
    incomplete: bool = False
    missing: list[str] = Field(default_factory=list)
    series_instance_uid: str | None = None  # CT: the series read, when the study carried several; 1.1
    skipped_series: list[str] = Field(default_factory=list)  # CT: "<series uid>: <why not read>"; 1.1
    model_versions: dict[str, str]
    sr_sop_instance_uid: str | None
    seg_sop_instance_uids: list[str] = Field(default_factory=list)
    arrived_at: datetime
    triaged_at: datetime
    patient_id: str | None = None  # only when the program's settings allow patient identifiers
    # screening rounds (1.2): the prior exam compared with (null: none found) and how long before
    prior_study_instance_uid: str | None = None
    prior_interval_days: int | None = None
    # CT: centroid of the lung fields (LPS mm), what a later round aligns its scan to
    lung_centroid_mm: tuple[float, float, float] | None = None


def read_triage_event(data: str | bytes) -> TriageEvent:
    """A stored or received TriageEvent of any readable schema version, as the current version;
    ValueError (pydantic's ValidationError is one) for a version this code does not read."""
    raw = json.loads(data)
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ValueError(f"TriageEvent schema_version {version!r} is not one this code reads "
                         f"({', '.join(READABLE_SCHEMA_VERSIONS)})")
    return TriageEvent.model_validate({**raw, "schema_version": SCHEMA_VERSION})


class ClaimCheck(_Frozen):
    """Kafka value for objects above the inline limit (content-type application/vnd.oncostream.ref+json)."""

    uri: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


CONTENT_TYPE_DICOM = "application/dicom"
CONTENT_TYPE_CLAIM_CHECK = "application/vnd.oncostream.ref+json"
