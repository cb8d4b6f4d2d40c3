"""DICOM Segmentation (BINARY) of LDCT nodule masks, one segment per nodule, on the source series' grid.

PS3.3 A.51 Segmentation IOD: https://dicom.nema.org/medical/dicom/current/output/chtml/part03/sect_A.51.html
Each segment carries the nodule's tracking UID, the same one the SR and the TriageEvent carry, so a
viewer can link the SR measurement group to its mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset

from oncostream.contracts import NoduleFinding
from oncostream.study import NoduleCandidate
from postprocess import codes
from postprocess.sr import ContentTimestamp, stamp

SERIES_NUMBER_SEG = 9002


def nodule_segmentation(
    datasets: Sequence[Dataset], nodules: Sequence[NoduleCandidate], findings: Sequence[NoduleFinding],
    model_versions: dict[str, str], *, sop_instance_uid: str, series_instance_uid: str, device_uid: str,
    when: ContentTimestamp,
) -> hd.seg.Segmentation | None:
    """SEG of every nodule that has a non-empty mask; None when there is nothing to segment.

    ``nodules[i]`` and ``findings[i]`` describe the same nodule (the finding gives the tracking UID).
    Masks (BoxMask) lie on ``datasets``' grid (slices, rows, cols), slices in the same order as ``datasets``.
    The SEG references the source slices its frames derive from (those a mask touches).
    """
    if len(nodules) != len(findings):
        raise ValueError("findings: need one finding per nodule")
    shape = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)) if datasets else (0, 0, 0)
    masked = [(i, n.mask) for i, n in enumerate(nodules) if n.mask is not None and n.mask.any()]
    if not masked:
        return None
    for i, mask in masked:
        if mask.shape != shape:
            raise ValueError(f"nodules[{i}].mask: shape {mask.shape} differs from the series grid {shape}")
    name = "ldct_nodule_segmenter" if "ldct_nodule_segmenter" in model_versions else sorted(model_versions)[0]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=name, family=codes.ARTIFICIAL_INTELLIGENCE, version=model_versions[name],
        source=codes.MANUFACTURER)
    # Only the slices a mask touches become frames (empty frames are omitted anyway), so only they are
    # handed to highdicom as source images: it validates and scans every frame it is given, which for a
    # whole series was a large part of a study's time (a 240-slice series: 19 s of 124 under load).
    touched = sorted({mask.offset[0] + k for _, mask in masked
                      for k in np.flatnonzero(mask.values.any(axis=(1, 2)))})
    descriptions = []
    pixels = np.zeros((len(touched), *shape[1:], len(masked)), dtype=bool)
    for number, (i, mask) in enumerate(masked, start=1):
        for t, index in enumerate(touched):
            pixels[t, ..., number - 1] = mask.slice_rows(index)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=f"Nodule {i + 1}",
            segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            segmented_property_type=codes.NODULE, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_uid=findings[i].tracking_uid,
            tracking_id=f"Nodule {i + 1}", anatomic_regions=[codes.LUNG]))
    seg = hd.seg.Segmentation(
        source_images=[datasets[k] for k in touched], pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid, series_number=SERIES_NUMBER_SEG,
        sop_instance_uid=sop_instance_uid, instance_number=1, manufacturer=codes.MANUFACTURER,
        manufacturer_model_name="oncostream LDCT", software_versions=model_versions[name],
        device_serial_number=device_uid[-16:], series_description="oncostream nodule masks",
        content_label="NODULES", content_date=when.date, content_time=when.time,
        series_date=when.date, series_time=when.time,
    )
    stamp(seg, when)
    return seg
