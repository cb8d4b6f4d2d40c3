"""The lung fields of an LDCT series, reduced to what aligns two screening rounds: their centroid.

Two exams of one patient are not in one patient coordinate frame (the patient lies elsewhere on the
table), so nodules are matched after a translation that brings the lungs together
(postprocess/lungrads.py match_priors). Each series' lung-field centroid (LPS mm) travels with its
TriageEvent (``lung_centroid_mm``) and its SR, so a later round needs neither the prior images nor
the prior's frame of reference.

Lungs: air (< -400 HU) inside the body, i.e. the air components that touch no in-plane edge of the
image (outside air does), keeping those at least a tenth the size of the largest (both lungs, the
airways joined to them; not bowel gas). Computed on a coarse grid (about 3 mm in-plane, every
second slice): the centroid moves by far less than a voxel.
"""

from __future__ import annotations

import numpy as np
from pydicom import Dataset
from scipy import ndimage

from ingest.decode import decode_pixels
from ingest.ldct import SeriesGeometry

AIR_HU = -400.0
_TARGET_PIXEL_MM = 3.0
_MIN_FRACTION_OF_LARGEST = 0.1


def lung_mask(volume_hu: np.ndarray) -> np.ndarray:
    """bool [D, H, W]: air inside the body (see the module docstring)."""
    air = volume_hu < AIR_HU
    labels, count = ndimage.label(air)
    if count == 0:
        return np.zeros_like(air)
    edge = np.zeros(count + 1, bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        edge[np.unique(face)] = True
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    sizes[edge] = 0
    if sizes.max() == 0:
        return np.zeros_like(air)
    keep = sizes >= _MIN_FRACTION_OF_LARGEST * sizes.max()
    keep[0] = False
    return keep[labels]


def lung_centroid_mm(datasets: list[Dataset]) -> tuple[float, float, float] | None:
    """Centroid (LPS mm) of the lung fields of a sorted axial series; None when it shows no lung."""
    if len(datasets) < 2:
        return None
    geometry = SeriesGeometry.from_datasets(datasets)
    z_step = 2 if len(datasets) >= 16 else 1
    stride = max(1, int(round(_TARGET_PIXEL_MM / float(min(geometry.spacing_mm[1:])))))
    picked = list(range(0, len(datasets), z_step))
    slices = []
    for k in picked:
        ds = datasets[k]
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        pixels = decode_pixels(ds)[::stride, ::stride].astype(np.float32)
        slices.append(pixels * np.float32(slope) + np.float32(intercept))
    mask = lung_mask(np.stack(slices))
    if not mask.any():
        return None
    k, i, j = (float(v) for v in np.argwhere(mask).mean(axis=0))
    index = np.array([picked[0] + k * z_step, i * stride, j * stride])
    # the coarse pixel's index i*stride is the corner sample of its block: the same convention both
    # rounds use, so it cancels in their difference
    return tuple(round(float(v), 2) for v in geometry.to_patient_mm(index))
