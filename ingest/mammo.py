"""A mammography exam through the backend: views in, per-view findings and exam probabilities out.

The backend returns raw tensors (MammoRaw); this module turns them into what postprocess reads:
regions in each image's own pixel grid, a calibrated exam malignancy probability, density
probabilities and an uncertainty. The exam combination is a two-feature logistic model fitted on
training-side validation phantoms (training/mammo_train.py); its coefficients live in
``model_repository/mammo_classifier/contract.yaml`` under ``calibration``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy import ndimage

from ingest.backends.base import InferenceBackend
from ingest.canonical.mammo import MODEL_SHAPE, MammoFrame, canonical_frame, review_reasons
from ingest.preprocess.mammo import frame_vector
from oncostream.errors import RejectedInstance, StudyFailed
from oncostream.model_contract import load_contract
from oncostream.settings import DEFAULT_MODEL_REPOSITORY
from oncostream.study import MammoInference, MammoViewInference, Study, mammo_view

MODELS = ("mammo_classifier", "mammo_density")
# Used when the contract carries no fitted values (e.g. a user's own model).
DEFAULT_CALIBRATION = {"exam_weight_breast_mean": 1.0, "exam_weight_view_max": 0.0, "exam_bias": 0.0,
                       "region_threshold": 0.5}
MAX_REGIONS_PER_VIEW = 3
_EPS = 1e-6

Region = tuple[str, tuple[int, int], tuple[int, int, int, int], float]


def _logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def exam_features(view_probabilities: list[float], lateralities: list[str]) -> tuple[float, float]:
    """(max over breasts of the mean view logit, max view logit): a lesion is usually seen on both
    views of its breast, but dense tissue can hide it on one, so both summaries are kept."""
    logits = [_logit(p) for p in view_probabilities]
    by_breast: dict[str, list[float]] = {}
    for z, lat in zip(logits, lateralities):
        by_breast.setdefault(lat, []).append(z)
    return max(sum(z) / len(z) for z in by_breast.values()), max(logits)


def exam_probability(view_probabilities: list[float], lateralities: list[str],
                     calibration: Mapping[str, float]) -> float:
    """Calibrated probability that the exam holds a malignant lesion."""
    c = {**DEFAULT_CALIBRATION, **calibration}
    breast_mean, view_max = exam_features(view_probabilities, lateralities)
    z = c["exam_weight_breast_mean"] * breast_mean + c["exam_weight_view_max"] * view_max + c["exam_bias"]
    return 1.0 / (1.0 + math.exp(-z))


def heatmap_regions(heatmap: np.ndarray, image_shape: tuple[int, int], threshold: float,
                    max_regions: int = MAX_REGIONS_PER_VIEW) -> list[Region]:
    """Connected heatmap cells above ``threshold`` -> regions (type, center_px, bbox_px, score) in the
    pixel grid of an image of ``image_shape``; the heatmap already has the image's orientation."""
    rows, cols = image_shape
    cell_h, cell_w = rows / heatmap.shape[0], cols / heatmap.shape[1]
    labels, count = ndimage.label(heatmap >= threshold, structure=np.ones((3, 3)))
    regions: list[Region] = []
    for index, cells in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[cells] == index
        weights = np.where(inside, heatmap[cells], 0.0)
        r, c = np.indices(weights.shape)
        centre_r = (cells[0].start + (weights * r).sum() / weights.sum() + 0.5) * cell_h
        centre_c = (cells[1].start + (weights * c).sum() / weights.sum() + 0.5) * cell_w
        bbox = (int(cells[0].start * cell_h), int(cells[1].start * cell_w),
                min(rows, int(math.ceil(cells[0].stop * cell_h))), min(cols, int(math.ceil(cells[1].stop * cell_w))))
        score = float(weights.max())
        regions.append(("region", (min(int(centre_r), rows - 1), min(int(centre_c), cols - 1)), bbox, score))
    regions.sort(key=lambda region: region[3], reverse=True)
    return regions[:max_regions]


def _pixels(ds) -> np.ndarray:
    from ingest.decode import decode_pixels

    return decode_pixels(ds)


def heatmap_in_view(heatmap: np.ndarray, frame: MammoFrame) -> np.ndarray:
    """A canonical-frame heatmap [h, w] -> a heatmap covering the view's own pixel grid, with cells of
    the same physical size (zero where the canonical field did not reach)."""
    cell_rows = frame.step[0] * MODEL_SHAPE[0] / heatmap.shape[0]
    cell_cols = frame.step[1] * MODEL_SHAPE[1] / heatmap.shape[1]
    rows, cols = frame.source_shape
    shape = (max(1, int(round(rows / cell_rows))), max(1, int(round(cols / cell_cols))))
    centre_r = (np.arange(shape[0]) + 0.5) * rows / shape[0] - 0.5
    centre_c = (np.arange(shape[1]) + 0.5) * cols / shape[1] - 0.5
    grid_r, grid_c = np.meshgrid(centre_r, centre_c, indexing="ij")
    model_r, model_c = frame.source_to_model(grid_r, grid_c)
    cell_r = (model_r + 0.5) * heatmap.shape[0] / MODEL_SHAPE[0] - 0.5
    cell_c = (model_c + 0.5) * heatmap.shape[1] / MODEL_SHAPE[1] - 0.5
    return ndimage.map_coordinates(np.asarray(heatmap, np.float32), [cell_r, cell_c], order=1, mode="constant",
                                   cval=0.0).astype(np.float32)


def canonical_views(datasets: list, study_instance_uid: str = "") -> tuple[list[np.ndarray], list[MammoFrame]]:
    """Each view's stored pixels and canonical frame. A view the models cannot read fails the study
    with the view's reason (StudyFailed)."""
    images, frames = [], []
    for ds in datasets:
        laterality, view = mammo_view(ds)
        stored = np.asarray(_pixels(ds), np.float32)
        try:
            frames.append(canonical_frame(ds, stored, laterality, view))
        except RejectedInstance as exc:
            raise StudyFailed(exc.reason, f"view {laterality}{view}: {exc.detail}", study_instance_uid) from exc
        images.append(stored)
    return images, frames


def infer_mammo_study(backend: InferenceBackend, study: Study,
                      repository: Path = DEFAULT_MODEL_REPOSITORY) -> MammoInference:
    """Run the exam's views (any of LCC, LMLO, RCC, RMLO present) through ``backend``; each view is
    first brought to the canonical frame (ingest/canonical/mammo.py); the exam calibration is read
    from the classifier's contract in ``repository``. A view the models cannot read fails the study
    with the view's reason (StudyFailed)."""
    if not study.datasets:
        raise ValueError("study: a mammography study needs at least one view")
    calibration = {**DEFAULT_CALIBRATION, **load_contract("mammo_classifier", repository).calibration}
    images, frames = canonical_views(study.datasets, study.study_instance_uid)
    lateralities, views = (list(v) for v in zip(*(mammo_view(ds) for ds in study.datasets)))
    reasons = [f"{lat}{view}: {r}" for ds, lat, view in zip(study.datasets, lateralities, views)
               for r in review_reasons(ds)]
    raw = backend.infer_mammo(images, [frame_vector(f) for f in frames], [f.mask for f in frames])
    view_results = []
    for k, ds in enumerate(study.datasets):
        heatmap = heatmap_in_view(np.clip(raw.heatmaps[k], 0.0, 1.0), frames[k])
        view_results.append(MammoViewInference(
            sop_instance_uid=str(ds.SOPInstanceUID), laterality=lateralities[k], view=views[k],
            malignancy_probability=float(raw.malignancy[k]), heatmap=heatmap,
            regions=heatmap_regions(heatmap, images[k].shape, calibration["region_threshold"]),
        ))
    probabilities = [float(p) for p in raw.malignancy]
    density = raw.density.mean(axis=0)
    density = density / density.sum()
    versions = backend.model_versions()
    return MammoInference(
        views=view_results,
        exam_malignancy_probability=exam_probability(probabilities, lateralities, calibration),
        density_probabilities=tuple(float(d) for d in density),  # type: ignore[arg-type]
        uncertainty=float(raw.uncertainty.max()),
        model_versions={name: versions[name] for name in MODELS if name in versions},
        review_reasons=reasons,
    )
