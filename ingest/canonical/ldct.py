"""LDCT canonicalisation: which series of a study is read, and in which orientation the models see it.

Series selection: a CT study often carries several series (a thin lung-kernel reconstruction, a thick
soft-tissue one, localizers, MIP/MPR reformats). Eligible series are ORIGINAL axial acquisitions
(localizers, DERIVED reformats, MIP/MPR and non-axial stacks are skipped, each with a reason); among
them a lung (sharp) kernel is preferred, then the thinnest slices, then the most slices. The chosen
series is named in the event and the SR.

Orientation: the models were trained on volumes whose axes run inferior -> superior, anterior ->
posterior and right -> left (DICOM LPS +z, +y, +x: ImageOrientationPatient 1\\0\\0\\0\\1\\0, slices
head-last). Any axis-aligned stack (rows or columns mirrored, rows and columns swapped, feet-first or
head-first) is transposed and mirrored into that order without resampling; a stack whose direction
cosines are off the patient axes by more than ``MAX_OBLIQUE_DEG`` (oblique acquisitions) or whose
slices step off the slice normal by more than that (gantry tilt) is refused with a reason: resampling
it would be a guess the models were never validated on.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from oncostream.errors import StudyFailed
from oncostream.study import BoxMask

MAX_OBLIQUE_DEG = 0.5
# a thin-section series (screening protocols ask for <= 1.0-1.25 mm): a series read thicker than
# this asks for a reader's check of the measurements (ingest/ldct.py thickness_review)
THIN_SERIES_MM = 1.5
# the thickest series a screening protocol accepts (ACR LDCT: <= 2.5 mm): once one is complete the
# study closes; a study holding only thicker series waits for its quiet time in case one follows
SCREENING_SERIES_MAX_MM = 2.5
# ConvolutionKernel values (or parts of them) that vendors use for lung / sharp reconstructions
_LUNG_KERNELS = ("LUNG", "SHARP", "BONE", "DETAIL", "B50", "B60", "B70", "BR5", "BR6", "BL5", "BL6", "I50",
                 "I70", "FC5", "YB", "YC", "YD", "RAMLAK")
_SKIPPED_TYPES = ("LOCALIZER", "MIP", "MINIP", "MPR", "REFORMATTED", "PROJECTION IMAGE", "VOLUME", "CURVED")


def _image_type(ds: Dataset) -> list[str]:
    return [str(v).upper() for v in ds.get("ImageType", []) or []]


def _normal(ds: Dataset) -> np.ndarray:
    orientation = np.asarray(ds.ImageOrientationPatient, np.float64)
    return np.cross(orientation[:3], orientation[3:])


def _series_problem(members: list[Dataset]) -> str | None:
    """Why a series is not the one to read (None: eligible)."""
    image_type = _image_type(members[0])
    skipped = [t for t in _SKIPPED_TYPES if t in image_type]
    if skipped:
        return f"image type {skipped[0].lower()}"
    if image_type and image_type[0] == "DERIVED":
        return "derived image"
    if abs(_normal(members[0])[2]) < np.cos(np.radians(45.0)):
        return "not an axial stack"
    if len(members) < 3:
        return f"{len(members)} slice(s)"
    return None


def _thickness_mm(members: list[Dataset]) -> float:
    value = members[0].get("SliceThickness")
    try:
        if value not in (None, ""):
            return float(value)
    except (TypeError, ValueError):
        pass
    positions = sorted(float(np.dot(_normal(d), np.asarray(d.ImagePositionPatient, np.float64))) for d in members)
    return float(np.median(np.diff(positions)))


def is_lung_kernel(ds: Dataset) -> bool:
    kernel = " ".join(str(v).upper() for v in np.atleast_1d(ds.get("ConvolutionKernel", "") or ""))
    return any(k in kernel for k in _LUNG_KERNELS)


def has_screening_series(datasets: list[Dataset]) -> bool:
    """Whether an eligible series of at most ``SCREENING_SERIES_MAX_MM`` is among ``datasets``."""
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    for ds in datasets:
        by_series[str(ds.SeriesInstanceUID)].append(ds)
    return any(_series_problem(m) is None and _thickness_mm(m) <= SCREENING_SERIES_MAX_MM + 1e-6
               for m in by_series.values())


@dataclass(frozen=True)
class SeriesChoice:
    series_instance_uid: str
    datasets: list[Dataset]
    skipped: list[str]  # "<series uid>: <why>" for every series not read


def select_series(datasets: list[Dataset], study_instance_uid: str) -> SeriesChoice:
    """The series of a CT study the models read (module doc). Raises StudyFailed when none is eligible."""
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    for ds in datasets:
        by_series[str(ds.SeriesInstanceUID)].append(ds)
    eligible, skipped = [], []
    for uid, members in by_series.items():
        problem = _series_problem(members)
        if problem is None:
            eligible.append((not is_lung_kernel(members[0]), _thickness_mm(members), -len(members), uid))
        else:
            skipped.append(f"{uid}: {problem}")
    if not eligible:
        raise StudyFailed("no_screening_series", "no series is an original axial CT stack of 3 or more slices ("
                          + "; ".join(skipped) + ")", study_instance_uid)
    eligible.sort()
    chosen = eligible[0][3]
    skipped += [f"{uid}: another series preferred" for *_, uid in eligible[1:]]
    return SeriesChoice(series_instance_uid=chosen, datasets=by_series[chosen], skipped=skipped)


@dataclass(frozen=True)
class CanonicalOrientation:
    """How a stored volume (slices along the sorted normal, rows, columns) maps onto the canonical
    (z up, y posterior, x left) volume: ``order[j]`` is the stored axis that becomes canonical axis j,
    ``flip[j]`` whether it runs backwards."""

    order: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    stored_shape: tuple[int, int, int]

    @classmethod
    def from_directions(cls, directions: np.ndarray, step: np.ndarray | None, stored_shape: tuple[int, int, int],
                        study_instance_uid: str) -> CanonicalOrientation:
        """``directions``: float [3, 3], the LPS unit vector of each stored axis (slice normal, column
        direction, row direction); ``step``: LPS vector from the first slice's position to the last's
        (None for one slice). Raises StudyFailed for oblique stacks and gantry tilt."""
        directions = np.asarray(directions, np.float64)
        limit = np.cos(np.radians(MAX_OBLIQUE_DEG))
        components = np.argmax(np.abs(directions), axis=1)
        if sorted(components.tolist()) != [0, 1, 2] or np.abs(directions).max(axis=1).min() < limit:
            worst = float(np.degrees(np.arccos(min(np.abs(directions).max(axis=1).min(), 1.0))))
            raise StudyFailed("oblique_series", f"the image plane is {worst:.1f} degrees off the patient axes "
                              f"(more than {MAX_OBLIQUE_DEG}): an oblique acquisition is not resampled",
                              study_instance_uid)
        if step is not None and np.linalg.norm(step) > 0:
            cosine = abs(float(np.dot(step / np.linalg.norm(step), directions[0])))
            if cosine < limit:
                tilt = float(np.degrees(np.arccos(min(cosine, 1.0))))
                raise StudyFailed("gantry_tilt", f"the slices step {tilt:.1f} degrees off their normal (gantry "
                                  f"tilt above {MAX_OBLIQUE_DEG} degrees): a tilted stack is not resampled",
                                  study_instance_uid)
        canonical_axis_of = {2: 0, 1: 1, 0: 2}  # LPS component z, y, x -> canonical axis 0, 1, 2
        order = [0, 0, 0]
        flip = [False, False, False]
        for stored_axis, component in enumerate(components):
            j = canonical_axis_of[int(component)]
            order[j] = stored_axis
            flip[j] = bool(directions[stored_axis, component] < 0)
        return cls(tuple(order), tuple(flip), tuple(int(n) for n in stored_shape))  # type: ignore[arg-type]

    @property
    def identity(self) -> bool:
        return self.order == (0, 1, 2) and not any(self.flip)

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        return tuple(self.stored_shape[a] for a in self.order)  # type: ignore[return-value]

    def to_canonical(self, volume: np.ndarray) -> np.ndarray:
        """Stored volume -> canonical volume (a view when nothing moves; otherwise one copy)."""
        if self.identity:
            return volume
        out = np.transpose(volume, self.order)
        flips = tuple(j for j in range(3) if self.flip[j])
        return np.ascontiguousarray(np.flip(out, axis=flips) if flips else out)

    def to_stored(self, volume: np.ndarray) -> np.ndarray:
        """Canonical volume -> stored volume (inverse of ``to_canonical``)."""
        if self.identity:
            return volume
        flips = tuple(j for j in range(3) if self.flip[j])
        out = np.flip(volume, axis=flips) if flips else volume
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.order)))

    def mask_to_stored(self, mask: BoxMask) -> BoxMask:
        """A mask on the canonical grid -> the same mask on the stored grid (``to_stored`` of its box)."""
        if self.identity:
            return mask
        flips = tuple(j for j in range(3) if self.flip[j])
        values = np.flip(mask.values, axis=flips) if flips else mask.values
        offset = [mask.shape[j] - mask.offset[j] - mask.values.shape[j] if self.flip[j] else mask.offset[j]
                  for j in range(3)]
        inverse = np.argsort(self.order)  # stored axis a is canonical axis inverse[a]
        return BoxMask(tuple(int(offset[j]) for j in inverse), np.ascontiguousarray(np.transpose(values, inverse)),
                       tuple(int(mask.shape[j]) for j in inverse))

    def stored_index(self, canonical_index: np.ndarray) -> np.ndarray:
        """Canonical voxel index (..., 3), fractional allowed -> stored voxel index (..., 3)."""
        canonical_index = np.asarray(canonical_index, np.float64)
        stored = np.empty_like(canonical_index)
        for j, axis in enumerate(self.order):
            value = canonical_index[..., j]
            stored[..., axis] = (self.stored_shape[axis] - 1 - value) if self.flip[j] else value
        return stored
