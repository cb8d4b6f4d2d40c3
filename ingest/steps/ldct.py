"""The `ldct_screening` steps between models, as pure functions (numpy in, numpy out).

The embedded backend composes them in :func:`run`; Triton's CPU python-backend models call the
same functions, so both realisations compute the same thing:

    HU volume -> denoise_input -> ldct_denoise (slice batches) -> detector_input (2 mm, windowed)
    -> ldct_nodule_detector -> series_candidates (reported, then look-back) -> nodule_patches (1 mm, 48^3)
    -> ldct_nodule_segmenter (+ left-right flip) -> combine_segmentations -> LdctRaw
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from ingest.backends.base import LdctRaw
from ingest.preprocess import ldct as preprocess
from ingest.preprocess.ldct import DENOISE_HU_MAX, DENOISE_HU_MIN, DENOISE_SCALE, PATCH_SIZE, ResampleGrid
from oncostream.model_contract import ModelContract

RunModel = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]
# Runs independent tasks (each writes its own part of the output) and returns when all have finished.
# The embedded backend runs them side by side on its model slots (EmbeddedBackend.run_all); each task's
# input is the same whatever the order, so the answer does not depend on the scheduling.
RunAll = Callable[[list[Callable[[], None]]], None]


def run_in_order(tasks: list[Callable[[], None]]) -> None:
    for task in tasks:
        task()

DENOISE_BATCH = 8
SEGMENT_BATCH = 8
MAX_CANDIDATES = 32
# Two peaks closer than this (in 2 mm detector voxels, per axis) are one candidate.
PEAK_NEIGHBOURHOOD = 5


# The denoiser reads only the in-plane box that holds the body on some slice, widened by its reach: the
# air around the body (a third to a half of a 512 x 512 field) is left as it is. Its receptive field
# reaches 20 pixels (pixel-unshuffle 2x, then radius 1+1+2+4+1+1 at half resolution), so with this
# margin every body pixel is denoised exactly as on the whole plane.
BODY_HU = -500.0  # air lies below, every tissue above (lung parenchyma about -850 sits inside the body box)
DENOISE_MARGIN = 24  # pixels; more than the denoiser's reach, and even (the 2x unshuffle grid)


def body_box(volume_hu: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the slices that hold the body on any slice, widened by DENOISE_MARGIN,
    starting on an even pixel and of even size where the plane allows; the whole plane when no body."""
    body = volume_hu > BODY_HU
    boxes = []
    for axis, size in ((2, volume_hu.shape[1]), (1, volume_hu.shape[2])):  # rows: any over slices and columns
        present = np.flatnonzero(body.any(axis=(0, axis)))
        if not len(present):
            return slice(0, volume_hu.shape[1]), slice(0, volume_hu.shape[2])
        start = max(0, int(present[0]) - DENOISE_MARGIN) & ~1
        stop = min(size, int(present[-1]) + 1 + DENOISE_MARGIN)
        stop += (stop - start) % 2 if stop < size else 0
        boxes.append(slice(start, stop))
    return boxes[0], boxes[1]


def denoise(volume_hu: np.ndarray, run_model: RunModel, overwrite: bool = False,
            run_all: RunAll = run_in_order) -> np.ndarray:
    """HU [D, H, W] -> denoised HU [D, H, W], through ``ldct_denoise`` one batch of slices at a time,
    inside the body box (outside it the air is returned as it came, clamped like the model's input).
    The denoiser needs even slice edges: an odd edge (a 597-pixel reconstruction grid) is padded by
    repeating its last row or column, and the pad is cut off again. Each batch is scaled, denoised
    and written back on its own: the working set beside the input and the output is one batch per
    task ``run_all`` runs at once. ``overwrite``: the output is ``volume_hu`` itself (a batch reads and
    writes only its own slices, and the denoiser works within a slice, so the answer is the same)."""
    rows, cols = body_box(volume_hu)
    out = np.clip(volume_hu, DENOISE_HU_MIN, DENOISE_HU_MAX, out=volume_hu if overwrite else None)

    def one_batch(start: int) -> None:
        batch = preprocess.denoise_input(volume_hu[start:start + DENOISE_BATCH, rows, cols])
        height, width = batch.shape[1:]
        if height % 2 or width % 2:
            batch = np.pad(batch, ((0, 0), (0, height % 2), (0, width % 2)), mode="edge")
        denoised = run_model("ldct_denoise", {"image": np.ascontiguousarray(batch[:, None])})["denoised"]
        out[start:start + DENOISE_BATCH, rows, cols] = denoised[:, 0, :height, :width] * np.float32(DENOISE_SCALE)

    run_all([partial(one_batch, start) for start in range(0, out.shape[0], DENOISE_BATCH)])
    return out


def detect(denoised_hu: np.ndarray, spacing_mm: np.ndarray, run_model: RunModel) -> tuple[np.ndarray, np.ndarray, ResampleGrid]:
    """Denoised HU -> (heatmap, diameter_mm) on the detector's 2 mm grid, plus that grid."""
    volume, grid = preprocess.detector_input(denoised_hu, spacing_mm)
    out = run_model("ldct_nodule_detector", {"volume": volume[None, None]})
    return out["heatmap"][0, 0], out["diameter_mm"][0, 0], grid


def detection_threshold(detector: ModelContract) -> float:
    """The detector's operating point: peaks of the centre heatmap at or above it are candidates. It
    is part of the detector's calibration (contract.yaml), fitted with its weights: the score at
    1 false positive per scan on the served path (denoiser -> detector -> segmenter, whose empty
    masks drop candidates) over calibration phantoms never evaluated on (training/ldct_train.py
    calibrate_served)."""
    return detector.calibration["detection_threshold"]


# Look-back: detector peaks from this floor up to the operating point are segmented as well and kept with
# the study, never reported, so that a later round can look back at a nodule this read did not report
# (a radiologist who finds a nodule looks for it on the prior). The floor sits well below the operating
# point because the question differs: not "is this a nodule?" but "was the nodule a later round found
# here already visible?". Below the operating point a peak is less often a nodule (that is what the
# operating point trades), so these are never findings and one counts only when a later round's finding
# lands on it (postprocess/followup.py). 0.1 is also as low as the detector's served calibration reads
# candidates (training/ldct_train.py CALIBRATION_FLOOR): nothing below it has been looked at.
LOOKBACK_FLOOR = 0.1
MAX_LOOKBACK_CANDIDATES = 16  # highest first: bounds the segmenter's extra work per series
MAX_SERIES_CANDIDATES = MAX_CANDIDATES + MAX_LOOKBACK_CANDIDATES


def local_maxima(heatmap: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels [N, 3] (C order) scoring at least ``threshold`` that are the maximum of their
    PEAK_NEIGHBOURHOOD cube (outside the grid counts as 0): scipy's maximum_filter with mode
    "constant", evaluated only where the score reaches the threshold (a few voxels, not the grid)."""
    index = np.argwhere(heatmap >= threshold)
    if not len(index):
        return index
    reach = PEAK_NEIGHBOURHOOD // 2
    cubes = np.lib.stride_tricks.sliding_window_view(np.pad(heatmap, reach), (PEAK_NEIGHBOURHOOD,) * 3)
    neighbourhood_max = cubes[tuple(index.T)].max(axis=(1, 2, 3))
    return index[heatmap[tuple(index.T)] == neighbourhood_max]


def extract_candidates(heatmap: np.ndarray, diameter_mm: np.ndarray, grid: ResampleGrid,
                       threshold: float, max_candidates: int = MAX_CANDIDATES) -> np.ndarray:
    """Local maxima of the centre heatmap above ``threshold`` -> float32 [K, 5]:
    z, y, x (voxel index in the source series), diameter_mm, detection score; highest score first."""
    index = local_maxima(heatmap, threshold)
    scores = heatmap[tuple(index.T)]
    order = np.argsort(-scores, kind="stable")[:max_candidates]
    index, scores = index[order], scores[order]
    diameters = diameter_mm[tuple(index.T)] if len(index) else np.zeros(0, np.float32)
    out = np.zeros((len(index), 5), np.float32)
    if len(index):
        out[:, :3] = grid.to_source_index(index)
        out[:, 3] = diameters
        out[:, 4] = scores
    return out


def lookback_candidates(heatmap: np.ndarray, diameter_mm: np.ndarray, grid: ResampleGrid,
                        threshold: float) -> np.ndarray:
    """Local maxima of the centre heatmap scoring from LOOKBACK_FLOOR up to (not including) the operating
    point ``threshold``, at most MAX_LOOKBACK_CANDIDATES, highest first; rows as extract_candidates."""
    peaks = extract_candidates(heatmap, diameter_mm, grid, LOOKBACK_FLOOR, max_candidates=heatmap.size)
    return peaks[peaks[:, 4] < threshold][:MAX_LOOKBACK_CANDIDATES]


def series_candidates(heatmap: np.ndarray, diameter_mm: np.ndarray, grid: ResampleGrid,
                      threshold: float) -> np.ndarray:
    """What the segmenter characterises for one series: the candidates at the operating point
    ``threshold`` (extract_candidates), then the look-back candidates below it. float32 [K, 5]; the
    score column tells the two apart (ingest/ldct.py)."""
    return np.concatenate([extract_candidates(heatmap, diameter_mm, grid, threshold),
                           lookback_candidates(heatmap, diameter_mm, grid, threshold)])


def segment(denoised_hu: np.ndarray, spacing_mm: np.ndarray, candidates: np.ndarray,
            run_model: RunModel, run_all: RunAll = run_in_order) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Patches around the candidates -> (masks [K,48,48,48], malignancy [K], composition [K,4],
    uncertainty [K]); each patch also runs mirrored left-right and the two passes are averaged
    (each batch and pass is one task for ``run_all``, writing its own slots)."""
    patches = preprocess.nodule_patches(denoised_hu, spacing_mm, candidates[:, :3])
    k = len(patches)
    masks = np.zeros((2, k, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE), np.float32)
    malignancy = np.zeros((k, 2), np.float32)
    composition = np.zeros((2, k, 4), np.float32)

    def one_pass(start: int, view: int) -> None:
        batch = patches[start:start + SEGMENT_BATCH, None]
        stop = start + len(batch)
        out = run_model("ldct_nodule_segmenter", {"patch": np.ascontiguousarray(batch if view == 0 else batch[..., ::-1])})
        mask = out["mask"][:, 0]
        masks[view, start:stop] = mask if view == 0 else mask[..., ::-1]
        malignancy[start:stop, view] = out["malignancy"][:, 0]
        composition[view, start:stop] = out["composition"]

    run_all([partial(one_pass, start, view) for start in range(0, k, SEGMENT_BATCH) for view in (0, 1)])
    return masks.mean(axis=0), malignancy.mean(axis=1), composition.mean(axis=0), flip_uncertainty(malignancy)


def flip_uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """Spread of the flip test-time augmentation: population std of the per-view probabilities [K, V]."""
    return probabilities.std(axis=1).astype(np.float32)


def run(volume_hu: np.ndarray, spacing_mm: np.ndarray, run_model: RunModel, threshold: float,
        overwrite: bool = False, run_all: RunAll = run_in_order) -> LdctRaw:
    """One series (HU [D, H, W], inferior to superior; spacing z, y, x mm) through every LDCT model;
    ``threshold``: the detector's operating point (detection_threshold); ``overwrite``: the volume is
    denoised in place (the caller no longer needs its HU); ``run_all``: how the independent model batches
    run (in order, or side by side: EmbeddedBackend.run_all)."""
    volume_hu = np.asarray(volume_hu, np.float32)
    spacing_mm = np.asarray(spacing_mm, np.float32)
    denoised = denoise(volume_hu, run_model, overwrite, run_all)
    heatmap, diameter, grid = detect(denoised, spacing_mm, run_model)
    candidates = series_candidates(heatmap, diameter, grid, threshold)
    masks, malignancy, composition, uncertainty = segment(denoised, spacing_mm, candidates, run_model, run_all)
    return LdctRaw(candidates=candidates, masks=masks, malignancy=malignancy,
                   composition=composition, uncertainty=uncertainty, operating_point=float(threshold))
