"""Ground truth written next to every synthetic study, so evaluations can check findings against it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoduleTruth(_Frozen):
    center_mm: tuple[float, float, float]  # DICOM patient coordinates (LPS), mm
    diameter_mm: float = Field(gt=0)  # mean diameter
    volume_mm3: float = Field(gt=0)
    composition: Literal["solid", "part_solid", "ground_glass", "calcified"]
    margin: Literal["smooth", "lobulated", "spiculated"]
    malignant: bool
    # screening rounds (oncostream/synth/rounds.py); None in a single-round set and in round 1
    change: Literal["grown", "stable", "new"] | None = None  # since the prior round
    prior_index: int | None = None  # which nodule of the prior round's truth this one is
    prior_diameter_mm: float | None = None
    growth_mm: float | None = None  # true change of mean diameter since the prior round
    growing: bool | None = None  # growth by Lung-RADS v2022 (> 1.5 mm mean diameter within 12 months)
    follow_up_lung_rads: str | None = None  # the true follow-up category (before 4X) from these sizes


class LdctTruth(_Frozen):
    kind: Literal["ldct"] = "ldct"
    seed: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uids: list[str]  # in slice order (inferior to superior)
    dose_fraction: float
    nodules: list[NoduleTruth]
    round: int = Field(default=1, ge=1)  # screening round of this patient
    prior_study_instance_uid: str | None = None  # the previous round's study
    interval_days: int | None = None  # since the previous round
    # where this round puts the patient: patient coordinates = the first round's + translation_mm
    translation_mm: tuple[float, float, float] | None = None
    resolved: list[int] = Field(default_factory=list)  # prior-round nodules (truth indices) gone now


class MammoLesionView(_Frozen):
    sop_instance_uid: str
    view: Literal["CC", "MLO"]
    center_px: tuple[int, int]  # (row, col)
    bbox_px: tuple[int, int, int, int]  # (row0, col0, row1, col1), end exclusive


class MammoLesionTruth(_Frozen):
    type: Literal["mass", "calcification"]
    shape: Literal["round", "oval", "irregular", "spiculated", "cluster"]
    laterality: Literal["L", "R"]
    malignant: bool
    size_mm: float = Field(gt=0)
    views: list[MammoLesionView]
    new_since_prior: bool = False  # an interval cancer: absent from the prior round


class MammoTruth(_Frozen):
    kind: Literal["mammo"] = "mammo"
    seed: int
    study_instance_uid: str
    sop_instance_uids: dict[str, str]  # "LCC" | "LMLO" | "RCC" | "RMLO" -> SOPInstanceUID
    density: Literal["a", "b", "c", "d"]
    malignant: bool  # exam level: any malignant lesion
    lesions: list[MammoLesionTruth]
    round: int = Field(default=1, ge=1)  # screening round of this patient
    prior_study_instance_uid: str | None = None
    interval_days: int | None = None
