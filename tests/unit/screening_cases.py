"""Small screening studies and the inference results our postprocess code receives for them.

Studies are real DICOM from the project's synthetic generators (small size). Inferences are built by
hand from the phantom's ground truth: they are the *inputs* of postprocess, not stand-ins for it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache

import numpy as np
from oncostream.study import BoxMask, LdctInference, MammoInference, MammoViewInference, NoduleCandidate, Study
from oncostream.synth.ldct import LdctPhantom, ldct_datasets, make_ldct_phantom
from oncostream.synth.mammo import MammoPhantom, make_mammo_phantom, mammo_datasets

ARRIVED = datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc)
NOW = datetime(2026, 1, 5, 9, 30, 4, tzinfo=timezone.utc)
LDCT_VERSIONS = {"ldct_denoise": "1.0.0", "ldct_nodule_detector": "1.0.0", "ldct_nodule_segmenter": "1.0.0"}
MAMMO_VERSIONS = {"mammo_classifier": "1.0.0", "mammo_density": "1.0.0"}


@lru_cache(maxsize=4)
def ldct_phantom(seed: int = 7) -> LdctPhantom:
    return make_ldct_phantom(seed, size="small", nodules=[
        {"diameter_mm": 11.0, "composition": "solid", "margin": "spiculated"},
        {"diameter_mm": 9.0, "composition": "ground_glass"},
    ])


def ldct_study(seed: int = 7, program: str = "default", incomplete: bool = False) -> Study:
    phantom = ldct_phantom(seed)
    return Study(study_instance_uid=phantom.truth.study_instance_uid, modality="CT",
                 datasets=ldct_datasets(phantom), arrived_at=ARRIVED, program=program,
                 incomplete=incomplete, missing=["slices 40-47"] if incomplete else [])


def ldct_inference(seed: int = 7, *, with_masks: bool = True, probabilities: tuple[float, ...] = (0.9, 0.1),
                   nodules: bool = True) -> LdctInference:
    """One candidate per truth nodule, measured as the truth says, mask = the phantom's label."""
    phantom = ldct_phantom(seed)
    candidates = []
    if nodules:
        for k, truth in enumerate(phantom.truth.nodules, start=1):
            mask = BoxMask.from_dense(phantom.labels == k) if with_masks else None
            candidates.append(NoduleCandidate(
                center_mm=truth.center_mm, detection_score=0.95, mean_diameter_mm=truth.diameter_mm,
                long_axis_mm=truth.diameter_mm * 1.2, volume_mm3=truth.volume_mm3, composition=truth.composition,
                malignancy_probability=probabilities[(k - 1) % len(probabilities)], uncertainty=0.05 * k,
                mask=mask))
    return LdctInference(nodules=candidates, model_versions=dict(LDCT_VERSIONS))


# --- mammography ------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def mammo_phantom(seed: int = 11) -> MammoPhantom:
    return make_mammo_phantom(seed, size="small", malignant=True)


def mammo_study(seed: int = 11) -> Study:
    datasets = mammo_datasets(mammo_phantom(seed))
    return Study(study_instance_uid=str(datasets[0].StudyInstanceUID), modality="MG", datasets=datasets,
                 arrived_at=ARRIVED)


def mammo_inference(study: Study, seed: int = 11, *, findings: bool = True, exam_probability: float = 0.7,
                    uncertainty: float = 0.1, served_types: bool = False) -> MammoInference:
    """One region per truth lesion view (when ``findings``); a coarse 16 x 12 heatmap hot at each region.
    Findings carry the lesion's type (mass, calcification), or with ``served_types`` the "region" type
    the served classifier reports (ingest/mammo.py heatmap_regions)."""
    truth = mammo_phantom(seed).truth
    by_sop: dict[str, list] = {}
    if findings:
        for lesion in truth.lesions:
            for view in lesion.views:
                by_sop.setdefault(view.sop_instance_uid, []).append(
                    ("region" if served_types else lesion.type, view.center_px, view.bbox_px, 0.8125))
    views = []
    for ds in study.datasets:
        rows, cols = int(ds.Rows), int(ds.Columns)
        regions = by_sop.get(str(ds.SOPInstanceUID), [])
        heat = np.zeros((16, 12), np.float32)
        for _, (r, c), _, score in regions:
            heat[min(15, r * 16 // rows), min(11, c * 12 // cols)] = score
        views.append(MammoViewInference(
            sop_instance_uid=str(ds.SOPInstanceUID), laterality=str(ds.ImageLaterality), view=str(ds.ViewPosition),
            malignancy_probability=0.8 if regions else 0.02, heatmap=heat, regions=regions))
    # no findings: an exam probability below the first decile edge of the committed calibration (0.033)
    return MammoInference(views=views, exam_malignancy_probability=exam_probability if findings else 0.002,
                          density_probabilities=(0.1, 0.2, 0.6, 0.1), uncertainty=uncertainty,
                          model_versions=dict(MAMMO_VERSIONS))
