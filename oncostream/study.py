"""In-process shapes passed between stages: assembled studies and inference results.

ingest produces ``Study``; a backend turns it into ``LdctInference`` / ``MammoInference``;
postprocess turns those into a TriageEvent, SR and SEG. Arrays stay numpy, never copied to JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
from pydicom import Dataset

from oncostream.errors import StudyFailed

# View Code Sequence values (CID 4014) of the two screening views: SNOMED CT and the SNOMED-RT codes older
# modalities still write
_SCREENING_VIEW_CODES = {"399162004": "CC", "R-10242": "CC", "399368009": "MLO", "R-10226": "MLO"}


def mammo_view(ds: Dataset) -> tuple[str, str]:
    """(laterality, view) of a mammography image. Laterality: Image Laterality, else the series'
    Laterality. View: from View Code Sequence (Type 1 in the Mammography Image module) when present,
    "CC" or "MLO" for their codes and the code value otherwise (a lateral or exaggerated view is not
    read as a screening view because View Position says MLO); from View Position (Type 3, which some
    modalities leave out) only without a coded view."""
    laterality = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).upper()
    coded = [str(item.get("CodeValue", "")) for item in ds.get("ViewCodeSequence", []) or []]
    if coded and coded[0]:
        return laterality, _SCREENING_VIEW_CODES.get(coded[0], coded[0])
    return laterality, str(ds.get("ViewPosition", "")).upper()


@dataclass
class Study:
    """An assembled study: a 4-view mammography exam or one LDCT series, plus where it came from."""

    study_instance_uid: str
    modality: str  # "MG" | "CT"
    datasets: list[Dataset]  # mammo: any order; CT: sorted along the slice normal, localizers dropped
    arrived_at: datetime
    program: str = "default"
    incomplete: bool = False
    missing: list[str] = field(default_factory=list)
    # (topic, partition, offset) of every instance, so the worker can advance its watermark
    sources: list[tuple[str, int, int]] = field(default_factory=list)
    assembly_key: str = ""  # "MG:<StudyInstanceUID>" | "CT:<StudyInstanceUID>" (ingest.assembly.assembly_key)
    # set when assembly could not make a study of what arrived: it is dead-lettered whole, never processed
    error: StudyFailed | None = None
    series_instance_uid: str | None = None  # CT: the series read (ingest/canonical/ldct.py select_series)
    skipped_series: list[str] = field(default_factory=list)  # CT: "<series uid>: <why not read>"
    # keyed hash of PatientID + IssuerOfPatientID with the program's secret: links screening rounds of
    # one patient in the results store without storing an identifier in clear; None when PatientID is empty
    patient_key: str | None = None

    @property
    def accession_number(self) -> str | None:
        if not self.datasets:
            return None
        return str(self.datasets[0].get("AccessionNumber", "")) or None

    @property
    def study_date(self) -> date | None:
        """StudyDate of the first instance; None when absent or not a valid DA."""
        if not self.datasets:
            return None
        value = str(self.datasets[0].get("StudyDate", "") or "")
        try:
            return datetime.strptime(value[:8], "%Y%m%d").date()
        except ValueError:
            return None


@dataclass(frozen=True)
class BoxMask:
    """A binary mask on a volume's grid, kept as the box that holds it: ``values`` (bool) at voxel
    ``offset`` of a volume of ``shape``. A nodule's mask on a 160 x 512 x 512 series is a few thousand
    voxels; the whole grid would be 42 MB per nodule."""

    offset: tuple[int, int, int]
    values: np.ndarray
    shape: tuple[int, int, int]

    def __post_init__(self):
        if self.values.ndim != 3 or self.values.dtype != bool:
            raise TypeError(f"values: a 3-D bool array, got {self.values.dtype} {self.values.shape}")
        if any(o < 0 or o + n > s for o, n, s in zip(self.offset, self.values.shape, self.shape)):
            raise ValueError(f"values {self.values.shape} at offset {self.offset} leave the grid {self.shape}")

    @classmethod
    def from_dense(cls, mask: np.ndarray) -> BoxMask:
        """The box around the true voxels of a whole-grid mask (an empty box when there are none)."""
        mask = np.asarray(mask, bool)
        present = np.argwhere(mask)
        if not len(present):
            return cls((0, 0, 0), np.zeros((0, 0, 0), bool), mask.shape)
        lo, hi = present.min(axis=0), present.max(axis=0) + 1
        return cls(tuple(int(v) for v in lo), mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].copy(), mask.shape)

    def box(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.values.shape))  # type: ignore[return-value]

    def any(self) -> bool:
        return bool(self.values.any())

    def dense(self) -> np.ndarray:
        """The whole-grid mask (for a reader that needs it; memory: the whole grid)."""
        out = np.zeros(self.shape, bool)
        out[self.box()] = self.values
        return out

    def slice_rows(self, index: int) -> np.ndarray:
        """The mask's plane ``index`` along the first axis, on the whole in-plane grid."""
        out = np.zeros(self.shape[1:], bool)
        k = index - self.offset[0]
        if 0 <= k < self.values.shape[0]:
            out[self.box()[1:]] = self.values[k]
        return out


@dataclass
class NoduleCandidate:
    """A detected nodule: geometry in patient LPS mm, mask on a 1 mm isotropic patch grid."""

    center_mm: tuple[float, float, float]
    detection_score: float
    mean_diameter_mm: float
    long_axis_mm: float
    volume_mm3: float
    composition: str  # solid | part_solid | ground_glass | calcified
    malignancy_probability: float
    uncertainty: float
    mask: BoxMask | None = None  # on the source series' pixel grid (slices, rows, cols)
    solid_component_mm: float | None = None  # part-solid only: mean diameter of the solid core, when measured


@dataclass(frozen=True)
class LookbackCandidate:
    """A detector peak below the operating point, segmented like a nodule but never reported (no finding,
    no category, no priority): kept with the study in the results store so that a later round can look
    back at it when it finds a nodule this read did not report (postprocess/followup.py). Patient LPS mm."""

    center_mm: tuple[float, float, float]
    mean_diameter_mm: float
    volume_mm3: float
    detection_score: float

    def __post_init__(self):
        if len(self.center_mm) != 3:
            raise ValueError(f"center_mm: want x, y, z in mm, got {self.center_mm!r}")
        for name in ("mean_diameter_mm", "volume_mm3"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: want a size >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.detection_score <= 1.0:
            raise ValueError(f"detection_score: want a score in [0, 1], got {self.detection_score!r}")


@dataclass
class LdctInference:
    nodules: list[NoduleCandidate]
    model_versions: dict[str, str]
    denoised_hu: np.ndarray | None = None  # (slices, rows, cols), kept only when asked for
    review_reasons: list[str] = field(default_factory=list)  # why a reader must look whatever the category
    lookback: list[LookbackCandidate] = field(default_factory=list)  # below the operating point, never reported


@dataclass
class MammoViewInference:
    sop_instance_uid: str
    laterality: str  # L | R
    view: str  # CC | MLO
    malignancy_probability: float
    heatmap: np.ndarray  # coarse, float32 in [0, 1], covering the image's own pixel grid
    regions: list[tuple[str, tuple[int, int], tuple[int, int, int, int], float]]  # (type, center, bbox, score)


@dataclass
class MammoInference:
    views: list[MammoViewInference]
    exam_malignancy_probability: float
    density_probabilities: tuple[float, float, float, float]  # a, b, c, d
    uncertainty: float
    model_versions: dict[str, str]
    review_reasons: list[str] = field(default_factory=list)  # why a reader must look whatever the score


@dataclass(frozen=True)
class PriorStudy:
    """An earlier finished study of the same patient (same patient_key and modality), as the results store
    or the PACS gives it back: what the follow-up rules compare the current study with."""

    study_instance_uid: str
    study_date: date | None
    event: "TriageEvent"  # noqa: F821 - oncostream.contracts.TriageEvent
    # its read's look-back candidates, from the results store; a prior read back from its SR (PACS) has none
    lookback_candidates: tuple[LookbackCandidate, ...] = ()


@dataclass
class StudyResult:
    """Everything one study produces; sinks publish all of it before offsets move."""

    study: Study
    event: "TriageEvent"  # noqa: F821 - oncostream.contracts.TriageEvent
    sr: Dataset | None
    segs: list[Dataset] = field(default_factory=list)
    secondary: list[Dataset] = field(default_factory=list)  # e.g. mammography heatmaps
    # LDCT, internal: never published nor in the DICOM outputs; the results store keeps them for the next round
    lookback_candidates: tuple[LookbackCandidate, ...] = ()
