"""One assembled LDCT series -> nodule findings in patient coordinates (and the look-back candidates
below the detector's operating point, kept for a later round's comparison, never reported).

The backend works in voxel space (``LdctRaw``); this module owns the DICOM geometry: it builds the
HU volume and spacing from the datasets, and maps each candidate's 1 mm mask patch back to patient
LPS millimetres (centre, diameters, volume) and onto the source series' own pixel grid (for SEG).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from scipy import ndimage
from scipy.special import expit, logit

from ingest.backends.base import InferenceBackend, LdctRaw
from ingest.canonical import ct_texture
from ingest.canonical.ldct import THIN_SERIES_MM, CanonicalOrientation
from ingest.decode import decode_pixels
from ingest.preprocess.ldct import PATCH_SIZE, PATCH_SPACING_MM, patch_to_source_index, source_to_patch_index
from oncostream.errors import OncostreamError
from oncostream.study import BoxMask, LdctInference, LookbackCandidate, NoduleCandidate, Study

COMPOSITIONS = ("solid", "part_solid", "ground_glass", "calcified")
MASK_THRESHOLD = 0.5
# the segmenter contract's calibration keys of the Platt map of malignancy for slices thicker than
# THIN_SERIES_MM (fitted by training/thick_calibration.py: calibration phantoms read with 2.5 mm slices
# onto their 1.25 mm read; absent: nothing applied)
THICK_SCALE, THICK_BIAS = "thick_slice_malignancy_scale", "thick_slice_malignancy_bias"

log = logging.getLogger(__name__)


class SeriesGeometryError(OncostreamError):
    """The series' position/orientation attributes do not describe a regular axial stack."""


@dataclass(frozen=True)
class SeriesGeometry:
    """Voxel index (z, y, x) <-> patient LPS mm for a stack of parallel slices."""

    positions: np.ndarray  # float64 [D, 3]: ImagePositionPatient per slice (inferior to superior)
    row_direction: np.ndarray  # float64 [3]: LPS direction of increasing column index (x)
    column_direction: np.ndarray  # float64 [3]: LPS direction of increasing row index (y)
    spacing_mm: np.ndarray  # float64 [3]: z (along the slice normal), y (row spacing), x (column spacing)

    @classmethod
    def from_datasets(cls, datasets: list[Dataset]) -> SeriesGeometry:
        if not datasets:
            raise SeriesGeometryError("an LDCT series needs at least one slice")
        try:
            orientation = np.asarray(datasets[0].ImageOrientationPatient, np.float64)
            positions = np.asarray([ds.ImagePositionPatient for ds in datasets], np.float64)
            row_spacing, column_spacing = (float(v) for v in datasets[0].PixelSpacing)
        except (AttributeError, TypeError, ValueError) as exc:
            raise SeriesGeometryError(f"missing or malformed geometry attribute: {exc}") from exc
        row_direction, column_direction = orientation[:3], orientation[3:6]
        normal = np.cross(row_direction, column_direction)
        if len(datasets) > 1:
            gaps = np.diff(positions @ normal)
            z_spacing = float(np.median(np.abs(gaps)))
        else:
            z_spacing = float(datasets[0].get("SliceThickness", 1.0) or 1.0)
        if z_spacing <= 0:
            raise SeriesGeometryError("slices share one position along the normal")
        return cls(positions, row_direction, column_direction, np.array([z_spacing, row_spacing, column_spacing]))

    def to_patient_mm(self, index: np.ndarray) -> np.ndarray:
        """Voxel index (..., 3) as (z, y, x), fractional allowed -> LPS mm (..., 3)."""
        index = np.asarray(index, np.float64)
        z = index[..., 0]
        slices = np.arange(len(self.positions), dtype=np.float64)
        if len(self.positions) > 1:
            # linear in z, extrapolated with the end gaps, so off-grid centres map continuously
            step = (self.positions[-1] - self.positions[0]) / (len(self.positions) - 1)
            origin = np.stack([np.interp(z, slices, self.positions[:, a]) for a in range(3)], axis=-1)
            below, above = z < 0, z > slices[-1]
            origin = np.where(below[..., None], self.positions[0] + z[..., None] * step, origin)
            origin = np.where(above[..., None], self.positions[-1] + (z[..., None] - slices[-1]) * step, origin)
        else:
            origin = np.broadcast_to(self.positions[0], index.shape).copy()
        return (origin + index[..., 2:3] * self.spacing_mm[2] * self.row_direction
                + index[..., 1:2] * self.spacing_mm[1] * self.column_direction)


def series_volume_hu(datasets: list[Dataset]) -> np.ndarray:
    """Stored pixels through RescaleSlope / RescaleIntercept -> float32 HU [D, H, W], written slice by
    slice into one array (no list of slices stacked into a second volume)."""
    volume = None
    for z, ds in enumerate(datasets):
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        pixels = decode_pixels(ds)
        if volume is None:
            volume = np.empty((len(datasets), *pixels.shape), np.float32)
        elif pixels.shape != volume.shape[1:]:
            raise SeriesGeometryError(f"slice {z} is {pixels.shape[0]} x {pixels.shape[1]} pixels, "
                                      f"the series' first {volume.shape[1]} x {volume.shape[2]}")
        volume[z] = pixels
        volume[z] *= np.float32(slope)
        volume[z] += np.float32(intercept)
    return volume


def canonical_geometry(geometry: SeriesGeometry, orientation: CanonicalOrientation) -> SeriesGeometry:
    """The geometry of the canonical volume: the same voxels in patient space, its axes reordered."""
    shape = orientation.canonical_shape
    slices = np.zeros((shape[0], 3))
    slices[:, 0] = np.arange(shape[0])
    positions = geometry.to_patient_mm(orientation.stored_index(slices))
    origin = geometry.to_patient_mm(orientation.stored_index(np.zeros(3)))
    row_direction = geometry.to_patient_mm(orientation.stored_index(np.array([0.0, 0.0, 1.0]))) - origin
    column_direction = geometry.to_patient_mm(orientation.stored_index(np.array([0.0, 1.0, 0.0]))) - origin
    spacing = np.array([geometry.spacing_mm[a] for a in orientation.order])
    return SeriesGeometry(positions, row_direction / np.linalg.norm(row_direction),
                          column_direction / np.linalg.norm(column_direction), spacing)


def series_orientation(geometry: SeriesGeometry, volume_shape: tuple[int, int, int],
                       study_instance_uid: str) -> CanonicalOrientation:
    """How this series' stored volume becomes the canonical one (StudyFailed: oblique or tilted)."""
    normal = np.cross(geometry.row_direction, geometry.column_direction)
    directions = np.stack([normal, geometry.column_direction, geometry.row_direction])
    step = geometry.positions[-1] - geometry.positions[0] if len(geometry.positions) > 1 else None
    return CanonicalOrientation.from_directions(directions, step, volume_shape, study_instance_uid)


def infer_ldct_study(backend: InferenceBackend, study: Study) -> LdctInference:
    """Run the LDCT models on one assembled series, brought to the canonical orientation
    (ingest/canonical/ldct.py) and the training noise texture (ingest/canonical/ct_texture.py), and
    express every nodule in patient space and every mask on the series' own pixel grid."""
    geometry = SeriesGeometry.from_datasets(study.datasets)
    volume = series_volume_hu(study.datasets)
    orientation = series_orientation(geometry, volume.shape, study.study_instance_uid)
    canonical = orientation.to_canonical(volume)
    del volume
    frame = canonical_geometry(geometry, orientation)
    canonical, texture = ct_texture.harmonise(canonical, float(np.mean(frame.spacing_mm[1:])))
    log.info("study %s: CT noise texture %s", study.study_instance_uid, texture.describe())
    shape = canonical.shape
    # the volume was built here and is read no further: the backend may denoise into it
    raw = backend.infer_ldct(canonical, frame.spacing_mm.astype(np.float32), overwrite=True)
    del canonical
    raw.malignancy = thick_slice_malignancy(raw.malignancy, slice_thickness_mm(study.datasets, geometry),
                                            backend.calibration("ldct_nodule_segmenter"))
    nodules = nodules_from_raw(raw, frame, shape)
    for nodule in nodules:
        if nodule.mask is not None:
            nodule.mask = orientation.mask_to_stored(nodule.mask)
    texture_review = texture.review_reason()
    return LdctInference(nodules=nodules, model_versions=backend.model_versions(),
                         review_reasons=thickness_review(study.datasets, geometry) + (
                             [texture_review] if texture_review else []),
                         lookback=lookback_from_raw(raw, frame, nodules))


def slice_thickness_mm(datasets: list[Dataset], geometry: SeriesGeometry) -> float:
    """How thick the series' slices read: SliceThickness, or the slice spacing where that is larger
    (a missing or unreadable SliceThickness counts as the spacing)."""
    try:
        return max(float(datasets[0].get("SliceThickness", 0.0) or 0.0), float(geometry.spacing_mm[0]))
    except (TypeError, ValueError):
        return float(geometry.spacing_mm[0])


def thick_slice_malignancy(probability: np.ndarray, thickness_mm: float, calibration: dict[str, float]) -> np.ndarray:
    """The served malignancy probability of a series thicker than the thin-section limit, mapped by a
    Platt map (``sigmoid(scale * logit(p) + bias)``, the segmenter contract's THICK_SCALE and THICK_BIAS)
    onto what a thin reconstruction of the same anatomy reads: thick slices blur a nodule's texture along
    z, and the model, trained and calibrated on thin slices, reads it a little differently. Thin series,
    and a contract without the keys, keep ``probability``."""
    if thickness_mm <= THIN_SERIES_MM or THICK_SCALE not in calibration:
        return probability
    p = np.clip(np.asarray(probability, np.float64), 1e-6, 1 - 1e-6)
    return expit(calibration[THICK_SCALE] * logit(p) + calibration.get(THICK_BIAS, 0.0)).astype(np.float32)


def thickness_review(datasets: list[Dataset], geometry: SeriesGeometry) -> list[str]:
    """Thick slices blur a nodule along z: its measured size grows (README, Vendor conformance), so a
    reader checks the measurements of a series thicker than the thin-section limit."""
    thickness = slice_thickness_mm(datasets, geometry)
    if thickness <= THIN_SERIES_MM:
        return []
    return [f"slices {thickness:g} mm thick (thin-section limit {THIN_SERIES_MM:g} mm): nodule sizes read "
            "larger than on thin slices; check the measurements"]


def nodules_from_raw(raw: LdctRaw, geometry: SeriesGeometry, volume_shape: tuple[int, int, int]) -> list[NoduleCandidate]:
    """Candidates at or above the operating point with a non-empty mask, as NoduleCandidate; duplicates of a
    kept nodule are dropped."""
    nodules: list[NoduleCandidate] = []
    kept: list[tuple[np.ndarray, float]] = []
    for k, mask, measures, centre_mm in _measured(raw, geometry, reported=True):
        radius = measures["mean_diameter_mm"] / 2.0
        if _duplicate(centre_mm, radius, kept):
            continue
        kept.append((centre_mm, radius))
        centre_index = raw.candidates[k, :3].astype(np.float64)
        nodules.append(NoduleCandidate(
            center_mm=tuple(float(v) for v in centre_mm),
            detection_score=float(raw.candidates[k, 4]),
            mean_diameter_mm=measures["mean_diameter_mm"],
            long_axis_mm=measures["long_axis_mm"],
            volume_mm3=measures["volume_mm3"],
            composition=COMPOSITIONS[int(np.argmax(raw.composition[k]))],
            malignancy_probability=float(raw.malignancy[k]),
            uncertainty=float(raw.uncertainty[k]),
            mask=mask_on_source_grid(mask, centre_index, geometry.spacing_mm, volume_shape),
        ))
    return nodules


def lookback_from_raw(raw: LdctRaw, geometry: SeriesGeometry,
                      nodules: list[NoduleCandidate]) -> list[LookbackCandidate]:
    """Candidates below the operating point with a non-empty mask (ingest/steps/ldct.py series_candidates),
    measured as nodules are; one that duplicates a reported nodule or a higher look-back candidate is dropped."""
    kept = [(np.asarray(n.center_mm, np.float64), n.mean_diameter_mm / 2.0) for n in nodules]
    lookback: list[LookbackCandidate] = []
    for k, _, measures, centre_mm in _measured(raw, geometry, reported=False):
        radius = measures["mean_diameter_mm"] / 2.0
        if _duplicate(centre_mm, radius, kept):
            continue
        kept.append((centre_mm, radius))
        lookback.append(LookbackCandidate(
            center_mm=tuple(float(v) for v in centre_mm), mean_diameter_mm=measures["mean_diameter_mm"],
            volume_mm3=measures["volume_mm3"], detection_score=float(raw.candidates[k, 4])))
    return lookback


def _measured(raw: LdctRaw, geometry: SeriesGeometry, reported: bool):
    """(row, patch mask, mask_measurements, centre in patient mm) of the candidates at or above the operating
    point (``reported``) or below it, highest score first, each with a component at its patch centre."""
    if not len(raw.candidates):
        return
    scores = raw.candidates[:, 4]
    above = scores >= np.float32(raw.operating_point)  # float32, as the steps compared
    for k in np.argsort(-scores, kind="stable"):
        if bool(above[k]) != reported:
            continue
        mask = central_component(raw.masks[k] >= MASK_THRESHOLD)
        if not mask.any():
            continue
        measures = mask_measurements(mask, raw.masks[k])
        centre_source = patch_to_source_index(measures["centroid"], raw.candidates[k, :3].astype(np.float64),
                                              geometry.spacing_mm)
        yield int(k), mask, measures, geometry.to_patient_mm(centre_source)


def _duplicate(centre_mm: np.ndarray, radius: float, kept: list[tuple[np.ndarray, float]]) -> bool:
    """Whether a centre lies inside a kept nodule, or a kept one inside it: one object found twice."""
    return any(np.linalg.norm(centre_mm - c) < max(r, radius) for c, r in kept)


def central_component(mask: np.ndarray) -> np.ndarray:
    """The connected component of a patch mask nearest the patch centre (neighbours are other findings)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    centre = (PATCH_SIZE - 1) / 2.0
    centroids = np.asarray(ndimage.center_of_mass(mask, labels, range(1, count + 1)))
    nearest = int(np.argmin(np.linalg.norm(centroids - centre, axis=1))) + 1
    return labels == nearest


def mask_measurements(mask: np.ndarray, probabilities: np.ndarray | None = None) -> dict:
    """Volume, equivalent-sphere (mean) diameter, 3D long axis and centroid of a 1 mm patch mask.

    With ``probabilities``, the volume is their sum over the thresholded component grown by one
    voxel: the mask probability carries the partial volume of boundary voxels, which a voxel count
    at 1 mm gets wrong by up to ~20 % for a 6 mm nodule."""
    voxel_mm3 = PATCH_SPACING_MM ** 3
    if probabilities is None:
        volume = float(mask.sum()) * voxel_mm3
    else:
        region = ndimage.binary_dilation(mask)
        volume = float(np.clip(probabilities, 0.0, 1.0)[region].sum()) * voxel_mm3
    points = np.argwhere(mask).astype(np.float64)
    centroid = points.mean(axis=0)
    surface = np.argwhere(mask & ~ndimage.binary_erosion(mask)).astype(np.float64)
    if len(surface) > 1500:
        surface = surface[np.linspace(0, len(surface) - 1, 1500).astype(int)]
    span = np.sqrt(((surface[:, None, :] - surface[None, :, :]) ** 2).sum(-1)).max() if len(surface) > 1 else 0.0
    return {
        "volume_mm3": volume,
        "mean_diameter_mm": float((6.0 * volume / np.pi) ** (1.0 / 3.0)),
        # centre-to-centre span plus one voxel: the extent of the outermost voxels
        "long_axis_mm": float(span + 1.0) * PATCH_SPACING_MM,
        "centroid": centroid,
    }


def mask_on_source_grid(mask: np.ndarray, centre_index: np.ndarray, spacing_mm: np.ndarray,
                        volume_shape: tuple[int, int, int]) -> BoxMask:
    """A 1 mm patch mask resampled (linear, threshold 0.5) onto the source series grid [D, H, W]."""
    corners = np.array([[0, 0, 0], [PATCH_SIZE - 1] * 3], np.float64)
    lo_hi = patch_to_source_index(corners, centre_index, spacing_mm)
    lo = np.clip(np.floor(lo_hi[0]).astype(int), 0, np.asarray(volume_shape) - 1)
    hi = np.clip(np.ceil(lo_hi[1]).astype(int) + 1, lo + 1, np.asarray(volume_shape))
    axes = [np.arange(lo[a], hi[a], dtype=np.float64) for a in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    patch_coords = source_to_patch_index(grid, centre_index, spacing_mm)
    values = ndimage.map_coordinates(mask.astype(np.float32), np.moveaxis(patch_coords, -1, 0), order=1,
                                     mode="constant", cval=0.0)
    return BoxMask(tuple(int(v) for v in lo), values >= 0.5, tuple(int(v) for v in volume_shape))
