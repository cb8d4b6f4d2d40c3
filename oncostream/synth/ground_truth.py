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


class LdctTruth(_Frozen):
    kind: Literal["ldct"] = "ldct"
    seed: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uids: list[str]  # in slice order (inferior to superior)
    dose_fraction: float
    nodules: list[NoduleTruth]


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


class MammoTruth(_Frozen):
    kind: Literal["mammo"] = "mammo"
    seed: int
    study_instance_uid: str
    sop_instance_uids: dict[str, str]  # "LCC" | "LMLO" | "RCC" | "RMLO" -> SOPInstanceUID
    density: Literal["a", "b", "c", "d"]
    malignant: bool  # exam level: any malignant lesion
    lesions: list[MammoLesionTruth]
