"""Mammography explainability: the classifier heatmap as a Secondary Capture image per view.

Why Secondary Capture and not a Parametric Map: the heatmap is a qualitative explanation, not a
measurement with real-world units, and a radiologist must be able to see it in any PACS viewer.
Every viewer displays an RGB Secondary Capture; Parametric Map (float frames plus a real-world value
map) needs viewer support most reading rooms lack. So each view gets one RGB image: the mammogram in
grey with the heatmap blended in red, downsampled to at most ``MAX_ROWS`` rows, derived from and
referencing its source view (Source Image Sequence), with the image laterality kept.
PS3.3 A.8.1 Secondary Capture Image IOD: https://dicom.nema.org/medical/dicom/current/output/chtml/part03/sect_A.8.html
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from scipy.ndimage import zoom

from oncostream.study import MammoViewInference
from postprocess import codes
from postprocess.sr import ContentTimestamp, stamp

MAX_ROWS = 512
SERIES_NUMBER_HEATMAP = 9003
_ALPHA = 0.45


def _grey8(ds: Dataset, step: int) -> np.ndarray:
    """The view's pixels, windowed to 8 bits by their own 1st-99th percentile (display only)."""
    pixels = ds.pixel_array[::step, ::step].astype(np.float32)
    lo, hi = np.percentile(pixels, [1.0, 99.0])
    grey = np.clip((pixels - lo) / max(float(hi - lo), 1.0), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        grey = 1.0 - grey
    return grey


def _blend(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    zoomed = zoom(np.clip(heat.astype(np.float32), 0.0, 1.0),
                  (grey.shape[0] / heat.shape[0], grey.shape[1] / heat.shape[1]), order=1)
    zoomed = zoomed[: grey.shape[0], : grey.shape[1]]
    rgb = np.repeat(grey[..., None], 3, axis=2) * (1.0 - _ALPHA * zoomed[..., None])
    rgb[..., 0] += _ALPHA * zoomed
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def heatmap_image(ds: Dataset, view: MammoViewInference, model_versions: dict[str, str], *,
                  sop_instance_uid: str, series_instance_uid: str, when: ContentTimestamp,
                  instance_number: int = 1) -> hd.sc.SCImage:
    """One RGB Secondary Capture of ``view``'s heatmap over its mammogram."""
    if view.heatmap.ndim != 2 or view.heatmap.size == 0:
        raise ValueError(f"heatmap: need a non-empty 2-D array, got shape {view.heatmap.shape}")
    step = max(1, int(np.ceil(int(ds.Rows) / MAX_ROWS)))
    rgb = _blend(_grey8(ds, step), view.heatmap)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    image = hd.sc.SCImage(
        pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=ds.StudyInstanceUID, series_instance_uid=series_instance_uid,
        series_number=SERIES_NUMBER_HEATMAP, sop_instance_uid=sop_instance_uid, instance_number=instance_number,
        manufacturer=codes.MANUFACTURER, patient_id=ds.get("PatientID"), patient_name=ds.get("PatientName"),
        patient_birth_date=ds.get("PatientBirthDate"), patient_sex=ds.get("PatientSex") or None,
        accession_number=ds.get("AccessionNumber"), study_id=ds.get("StudyID"),
        study_date=ds.get("StudyDate") or None, study_time=ds.get("StudyTime") or None,
        referring_physician_name=ds.get("ReferringPhysicianName"),
        pixel_spacing=(float(spacing[0]) * step, float(spacing[1]) * step) if spacing else None,
        laterality=view.laterality, patient_orientation=("P", "L" if view.laterality == "R" else "R"),
        series_description="oncostream mammography heatmaps",
        content_date=when.date, content_time=when.time, series_date=when.date, series_time=when.time,
    )
    if ds.get("PatientOrientation"):  # mammography orientations ("A", "FR") are richer than highdicom's enum
        image.PatientOrientation = list(ds.PatientOrientation)
    image.ImageType = ["DERIVED", "SECONDARY"]
    versions = ", ".join(f"{k}={v}" for k, v in sorted(model_versions.items()))
    image.DerivationDescription = f"classifier saliency heatmap ({versions})"
    source = Dataset()
    source.ReferencedSOPClassUID = ds.SOPClassUID
    source.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    image.SourceImageSequence = DicomSequence([source])
    image.ImageComments = f"{view.laterality}{view.view} classifier heatmap"  # SC has no View Position
    stamp(image, when)
    return image


def heatmap_images(datasets: Sequence[Dataset], views: Sequence[MammoViewInference], model_versions: dict[str, str],
                   *, series_instance_uid: str, uid_for: Callable[[str], str],
                   when: ContentTimestamp) -> list[hd.sc.SCImage]:
    """One heatmap image per view that has a heatmap, in the order of ``datasets``."""
    by_uid = {v.sop_instance_uid: v for v in views}
    images = []
    for ds in datasets:
        view = by_uid.get(str(ds.SOPInstanceUID))
        if view is None or view.heatmap is None or view.heatmap.size == 0:
            continue
        images.append(heatmap_image(ds, view, model_versions, sop_instance_uid=uid_for(str(ds.SOPInstanceUID)),
                                    series_instance_uid=series_instance_uid, when=when,
                                    instance_number=len(images) + 1))
    return images
