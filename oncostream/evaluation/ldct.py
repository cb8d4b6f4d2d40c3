"""LDCT half of ``oncostream eval``: fresh phantoms through the committed models, scored against truth.

Each phantom (25 % dose) is written as CT DICOM (``ldct_datasets``) and read back the way the pipeline
reads a series (ingest/ldct.py: HU through the rescale, geometry from ImagePositionPatient /
ImageOrientationPatient / PixelSpacing; the served kernel harmonisation, ingest/canonical/ct_texture.py,
which leaves a default reconstruction as it is), then goes through the serving steps (ingest/steps/ldct.py:
DALI preprocessing, ONNX Runtime, flip test-time augmentation) and ingest/ldct.py's conversion to
nodules in patient millimetres.

Matching rule: a reported nodule hits a true nodule when its centre lies within
max(0.5 x true diameter, 3 mm) of the true centre; each true nodule is hit at most once, highest
detection score first. A report that hits a nodule under 6 mm counts neither way; a report that
hits no nodule is a false positive.

- ``ldct_sensitivity_at_1fp_ge6mm``: highest sensitivity for nodules >= 6 mm over detection-score
  thresholds that keep false positives <= 1 per scan (the FROC point at 1 FP/scan);
- ``ldct_fp_per_scan``: false positives per scan at the shipped operating point (every reported nodule);
- ``ldct_sensitivity_ge6mm``: sensitivity at that operating point;
- ``ldct_seg_dice_ge6mm``: mean Dice of the reported mask (source grid) with the truth label, hit
  nodules >= 6 mm; ``ldct_volume_abs_err_median_ge6mm``: median |V - V_true| / V_true of the same;
- ``ldct_malignancy_auc`` / ``ece_nodule``: ROC AUC and expected calibration error (10 bins) of the
  malignancy probability over every hit true nodule; ``ldct_composition_accuracy``: share of the same
  nodules reported with their true composition (solid / part-solid / ground-glass / calcified: it
  sets the Lung-RADS category);
- ``denoise_psnr_gain_db_25pct``: PSNR(denoised 25 % dose) - PSNR(25 % dose input);
  ``denoise_25pct_minus_fulldose_psnr_db``: PSNR(denoised 25 % dose) - PSNR(full dose). PSNR against
  the noiseless phantom over the body (voxels where the noiseless phantom is above -950 HU, lungs
  included), data range 2000 HU, mean squared error pooled over all series;
- ``n_ldct``: series; ``ldct_seconds_per_series``: mean wall time of the model steps per series;
- ``<key>_ci95`` for the sensitivity, AUC and ECE: percentile bootstrap over series (stats.py);
- ``ece_nodule_if_calibrated`` (and ``_p95``): the ECE a perfectly calibrated model with these
  probabilities would show on this many nodules (stats.py ece_if_calibrated): the sampling floor.
- ``ece_nodule_pooled`` (+ ``_ci95``, ``_if_calibrated``, ``_p95``), ``ldct_malignancy_auc_pooled``:
  the same over pooled phantoms (evaluate_nodule_calibration): four draws of the generator's nodule
  distribution each, so several times the scored nodules per (slow) phantom and an ECE floor under
  the target; ``n_ldct_pooled`` series, ``ldct_nodules_scored_pooled`` nodules.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from ingest.canonical import ct_texture
from ingest.ldct import SeriesGeometry, nodules_from_raw, series_volume_hu, slice_thickness_mm, thick_slice_malignancy
from ingest.backends.base import LdctRaw
from ingest.steps import ldct as steps
from oncostream.evaluation import map_seeds
from oncostream.evaluation.mammo import roc_auc
from oncostream.evaluation.stats import bootstrap_ci95, ece_if_calibrated, expected_calibration_error
from oncostream.model_contract import cpu_session, load_contract, onnx_path
from oncostream.settings import DEFAULT_MODEL_REPOSITORY

log = logging.getLogger(__name__)

LDCT_MODELS = ("ldct_denoise", "ldct_nodule_detector", "ldct_nodule_segmenter")
PSNR_RANGE_HU = 2000.0
BODY_THRESHOLD_HU = -950.0
REPORTABLE_MM = 6.0
FP_BUDGET_PER_SCAN = 1.0
CI_KEYS = ("ldct_sensitivity_at_1fp_ge6mm", "ldct_malignancy_auc", "ece_nodule")
# pooled calibration phantoms (evaluate_nodule_calibration): four draws of the nodule distribution
POOLED_DRAWS = 4
POOLED_CAP = 8


class LdctModels:
    """The three LDCT ONNX models in ONNX Runtime, as ``run_model`` for the steps."""

    def __init__(self, repository: Path, threads: int = 0):
        self._sessions = {name: cpu_session(onnx_path(name, repository), threads) for name in LDCT_MODELS}
        self.contracts = {name: load_contract(name, repository) for name in LDCT_MODELS}
        self.threshold = steps.detection_threshold(self.contracts["ldct_nodule_detector"])

    def __call__(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._sessions[name]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))


def match_radius_mm(diameter_mm: float) -> float:
    return max(0.5 * diameter_mm, 3.0)


def match_detections(centres: np.ndarray, scores: np.ndarray, truth_centres: np.ndarray,
                     truth_diameters: np.ndarray) -> np.ndarray:
    """Index of the true nodule each detection hits (-1: none), highest score first, one hit per nodule."""
    hits = np.full(len(centres), -1, int)
    taken = np.zeros(len(truth_centres), bool)
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if not len(truth_centres):
            break
        distance = np.linalg.norm(truth_centres - centres[i], axis=1)
        radius = np.array([match_radius_mm(d) for d in truth_diameters])
        free = (~taken) & (distance <= radius)
        if free.any():
            j = int(np.flatnonzero(free)[np.argmin(distance[free])])
            hits[i] = j
            taken[j] = True
    return hits


def sensitivity_at_fp_rate(scores: np.ndarray, is_tp: np.ndarray, is_fp: np.ndarray, n_positive: int,
                           n_scans: int, fp_per_scan: float = FP_BUDGET_PER_SCAN) -> tuple[float, float]:
    """Best sensitivity over score thresholds whose false positives per scan stay within the budget,
    and the lowest such threshold (NaN when no detection fits)."""
    if n_positive == 0:
        return float("nan"), float("nan")
    scores = np.asarray(scores, float)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(np.asarray(is_tp)[order])
    fp = np.cumsum(np.asarray(is_fp)[order])
    ok = fp / max(n_scans, 1) <= fp_per_scan
    if not ok.any():
        return 0.0, float("nan")
    last = int(np.flatnonzero(ok).max())
    return float(tp[last]) / n_positive, float(scores[order][last])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def psnr_db(mse: float, data_range: float = PSNR_RANGE_HU) -> float:
    return float(10.0 * np.log10(data_range ** 2 / mse)) if mse > 0 else float("inf")


@dataclass
class SeriesScore:
    """One phantom series through the served LDCT steps, scored against its truth."""

    detection_score: np.ndarray  # [R] every reported nodule
    hit: np.ndarray  # [R] index of the true nodule it hits, -1: none
    malignancy: np.ndarray  # [R] reported malignancy probability
    truth_malignant: np.ndarray  # [T]
    composition_correct: list[bool]  # hit nodules (any size): reported composition == true composition
    reportable: np.ndarray  # [T] true diameter >= 6 mm
    dice: list[float]  # hit reportable nodules
    volume_error: list[float]  # same, |V - V_true| / V_true
    squared_error: dict[str, float]  # 25 % dose input, full dose, denoised vs noiseless, summed over the body
    body_voxels: int
    seconds: float  # model steps only


def score_series(seed: int, size: str, run_model: LdctModels, threshold: float | None = None,
                 nodules: list[dict] | None = None) -> SeriesScore:
    """The 25 % dose phantom of ``seed`` (``nodules``: make_ldct_phantom's override) scored by
    score_phantom."""
    from oncostream.synth.ldct import make_ldct_phantom

    return score_phantom(make_ldct_phantom(seed, size=size, nodules=nodules), run_model, threshold)


def score_phantom(phantom, run_model: LdctModels, threshold: float | None = None) -> SeriesScore:
    """A phantom written as DICOM, read back as the pipeline reads it, run through the serving steps
    (ingest/steps/ldct.py; ``threshold``: the detector operating point, default the detector
    contract's) and matched with its truth (module doc)."""
    from oncostream.synth.ldct import ldct_datasets

    datasets = ldct_datasets(phantom)
    geometry = SeriesGeometry.from_datasets(datasets)
    # the served path's kernel harmonisation (a default reconstruction is left as it is)
    volume, texture = ct_texture.harmonise(series_volume_hu(datasets), float(np.mean(geometry.spacing_mm[1:])))
    if texture.changed:
        log.info("default phantom harmonised: CT noise texture %s", texture.describe())
    spacing = geometry.spacing_mm.astype(np.float32)
    started = time.perf_counter()
    denoised = steps.denoise(volume, run_model)
    heatmap, diameter, grid = steps.detect(denoised, spacing, run_model)
    threshold = run_model.threshold if threshold is None else threshold
    # with the look-back candidates, as served: they cost segmenter time and never become findings
    candidates = steps.series_candidates(heatmap, diameter, grid, threshold)
    masks, mal, composition, uncertainty = steps.segment(denoised, spacing, candidates, run_model)
    # as served (ingest/ldct.py infer_ldct_study): a series thicker than the thin-section limit (the small
    # phantoms' 2.5 mm) gets the segmenter contract's thick-slice map
    mal = thick_slice_malignancy(mal, slice_thickness_mm(datasets, geometry),
                                 run_model.contracts["ldct_nodule_segmenter"].calibration)
    raw = LdctRaw(candidates=candidates, masks=masks, malignancy=mal, composition=composition,
                  uncertainty=uncertainty, operating_point=threshold)
    nodules = nodules_from_raw(raw, geometry, volume.shape)
    seconds = time.perf_counter() - started

    body = phantom.hu_clean > BODY_THRESHOLD_HU
    squared_error = {name: float(((image[body] - phantom.hu_clean[body]).astype(np.float64) ** 2).sum())
                     for name, image in (("low", volume), ("full", phantom.hu_full), ("denoised", denoised))}
    truth = phantom.truth.nodules
    truth_centres = np.array([t.center_mm for t in truth], float).reshape(-1, 3)
    truth_diameters = np.array([t.diameter_mm for t in truth], float)
    reportable = truth_diameters >= REPORTABLE_MM
    centres = np.array([c.center_mm for c in nodules], float).reshape(-1, 3)
    det_scores = np.array([c.detection_score for c in nodules], float)
    hits = match_detections(centres, det_scores, truth_centres, truth_diameters)
    dices, volume_errors = [], []
    composition_correct = [nodule.composition == truth[j].composition for nodule, j in zip(nodules, hits) if j >= 0]
    for nodule, j in zip(nodules, hits):
        if j >= 0 and reportable[j]:
            dices.append(dice(nodule.mask.dense(), phantom.labels == j + 1))
            volume_errors.append(abs(nodule.volume_mm3 - truth[j].volume_mm3) / truth[j].volume_mm3)
    return SeriesScore(detection_score=det_scores, hit=hits,
                       malignancy=np.array([c.malignancy_probability for c in nodules], float),
                       truth_malignant=np.array([t.malignant for t in truth], bool),
                       composition_correct=composition_correct, reportable=reportable,
                       dice=dices, volume_error=volume_errors, squared_error=squared_error,
                       body_voxels=int(body.sum()), seconds=seconds)


class _StepsBackend:
    """The serving steps as the ``infer_ldct`` that ingest/ldct.py's served path calls."""

    def __init__(self, run_model: LdctModels):
        self._run_model = run_model

    def infer_ldct(self, volume_hu: np.ndarray, spacing_mm: np.ndarray, *, overwrite: bool = False) -> LdctRaw:
        return steps.run(volume_hu, spacing_mm, self._run_model, self._run_model.threshold, overwrite=overwrite)

    def model_versions(self) -> dict[str, str]:
        return {}

    def calibration(self, name: str) -> dict[str, float]:
        return dict(self._run_model.contracts[name].calibration)


def score_profile_series(phantom, run_model: LdctModels, profile: str) -> SeriesScore:
    """A phantom re-expressed by a vendor profile (oncostream/synth/vendors.py) and read
    by the served path (ingest/ldct.py infer_ldct_study: series geometry, canonical orientation,
    serving steps). Detection, malignancy, composition and volume are scored against the truth; the
    Dice and denoising figures, which compare voxel grids, only on the default profile."""
    from datetime import datetime, timezone

    from ingest.assembly import sort_ct_series
    from ingest.ldct import infer_ldct_study
    from oncostream.study import Study
    from oncostream.synth.ldct import ldct_datasets
    from oncostream.synth.vendors import CT_PROFILES

    datasets, _ = sort_ct_series(CT_PROFILES[profile](ldct_datasets(phantom)), None)
    study = Study(study_instance_uid=phantom.truth.study_instance_uid, modality="CT", datasets=datasets,
                  arrived_at=datetime.now(timezone.utc))
    started = time.perf_counter()
    nodules = infer_ldct_study(_StepsBackend(run_model), study).nodules
    seconds = time.perf_counter() - started
    truth = phantom.truth.nodules
    truth_diameters = np.array([t.diameter_mm for t in truth], float)
    reportable = truth_diameters >= REPORTABLE_MM
    hits = match_detections(np.array([c.center_mm for c in nodules], float).reshape(-1, 3),
                            np.array([c.detection_score for c in nodules], float),
                            np.array([t.center_mm for t in truth], float).reshape(-1, 3), truth_diameters)
    return SeriesScore(
        detection_score=np.array([c.detection_score for c in nodules], float), hit=hits,
        malignancy=np.array([c.malignancy_probability for c in nodules], float),
        truth_malignant=np.array([t.malignant for t in truth], bool),
        composition_correct=[n.composition == truth[j].composition for n, j in zip(nodules, hits) if j >= 0],
        reportable=reportable, dice=[],
        volume_error=[abs(n.volume_mm3 - truth[j].volume_mm3) / truth[j].volume_mm3
                      for n, j in zip(nodules, hits) if j >= 0 and reportable[j]],
        squared_error={"low": 0.0, "full": 0.0, "denoised": 0.0}, body_voxels=0, seconds=seconds)


@lru_cache(maxsize=2)
def _models(repository: Path) -> LdctModels:
    """This process's models: one thread per run in an evaluation process (the processes side by side use
    the cores), ONNX Runtime's default pool when scoring in the main process."""
    return LdctModels(repository, threads=1 if multiprocessing.parent_process() is not None else 0)


def score_seed(seed: int, size: str, repository: Path, profiles: tuple[str, ...], pooled: bool) -> list[SeriesScore]:
    """One phantom (a pooled calibration one when ``pooled``), generated once and scored as each of
    ``profiles`` re-expresses it; runs in an evaluation process (map_seeds)."""
    from oncostream.synth.ldct import make_ldct_phantom

    phantom = make_ldct_phantom(seed, size=size, nodules=pooled_series_specs(seed) if pooled else None)
    run_model = _models(repository)
    return [score_phantom(phantom, run_model) if profile == "default"
            else score_profile_series(phantom, run_model, profile) for profile in profiles]


def evaluate_ldct(seeds: range, size: str, repository: Path = DEFAULT_MODEL_REPOSITORY,
                  profiles: Sequence[str] = ("default",)) -> dict:
    """Metrics of the LDCT models of ``repository`` on the 25 % dose phantoms of ``seeds`` (see module
    doc), read as each of ``profiles`` re-expresses them; the keys of a profile other than the default
    carry its name (``ldct_malignancy_auc_smooth_kernel``). Each phantom is generated once and read as
    every profile (generating a full phantom costs about as much as reading it)."""
    series: dict[str, list[SeriesScore]] = {profile: [] for profile in profiles}
    score = partial(score_seed, size=size, repository=repository, profiles=tuple(profiles), pooled=False)
    for scores in map_seeds(score, seeds, f"LDCT series ({','.join(profiles)})"):
        for profile, scored in zip(profiles, scores):
            series[profile].append(scored)
    results = {}
    for profile, scored in series.items():
        figures = ldct_metrics(scored)
        figures.update(bootstrap_ci95(len(scored), lambda idx, s=scored: ldct_metrics([s[i] for i in idx]), CI_KEYS))
        figures.update(ece_if_calibrated(scored_nodules(scored)[0], "ece_nodule"))
        if profile != "default":  # voxel-grid comparisons are not made on re-expressed series
            figures = {f"{k}_{profile}": v for k, v in figures.items()
                       if not k.startswith(("denoise_", "ldct_seg_dice"))}
        results.update(figures)
    return results


def pooled_series_specs(seed: int) -> list[dict]:
    """The nodules of a pooled calibration phantom: POOLED_DRAWS draws of the generator's
    distribution, at most POOLED_CAP (the same per-nodule distribution as the regular phantoms)."""
    from oncostream.synth.ldct import pooled_nodule_specs

    return pooled_nodule_specs(np.random.default_rng([seed, 0xCA1B]), POOLED_DRAWS, POOLED_CAP)


def evaluate_nodule_calibration(seeds: range, size: str, repository: Path = DEFAULT_MODEL_REPOSITORY,
                                profiles: Sequence[str] = ("default",)) -> dict:
    """Malignancy calibration and AUC over the hit nodules of pooled phantoms (pooled_series_specs):
    ``ece_nodule_pooled`` with its bootstrap interval over series and its sampling floor,
    ``ldct_malignancy_auc_pooled``, ``n_ldct_pooled``, ``ldct_nodules_scored_pooled``; for each of
    ``profiles`` other than the default the same keys with its name appended, from the same phantoms
    (each generated once) re-expressed by it."""
    series: dict[str, list[SeriesScore]] = {profile: [] for profile in profiles}
    score = partial(score_seed, size=size, repository=repository, profiles=tuple(profiles), pooled=True)
    for scores in map_seeds(score, seeds, f"pooled LDCT series ({','.join(profiles)})"):
        for profile, scored in zip(profiles, scores):
            series[profile].append(scored)
    results = {}
    for profile, scored in series.items():
        def metrics(indices, scored=scored) -> dict:
            p, y = scored_nodules([scored[i] for i in indices])
            return {"ece_nodule_pooled": expected_calibration_error(p, y) if len(p) else float("nan"),
                    "ldct_malignancy_auc_pooled": roc_auc(p, y)}

        p, _ = scored_nodules(scored)
        figures = {**metrics(range(len(scored))), "n_ldct_pooled": len(scored), "ldct_nodules_scored_pooled": len(p),
                   **bootstrap_ci95(len(scored), metrics, ("ece_nodule_pooled", "ldct_malignancy_auc_pooled")),
                   **ece_if_calibrated(p, "ece_nodule_pooled")}
        results.update(figures if profile == "default" else {f"{k}_{profile}": v for k, v in figures.items()})
    return results


def scored_nodules(series: list[SeriesScore]) -> tuple[np.ndarray, np.ndarray]:
    """Reported malignancy probability and truth of every hit true nodule."""
    p = [s.malignancy[s.hit >= 0] for s in series]
    y = [s.truth_malignant[s.hit[s.hit >= 0]] for s in series]
    return (np.concatenate(p) if p else np.zeros(0)), (np.concatenate(y) if y else np.zeros(0, bool))


def ldct_metrics(series: list[SeriesScore]) -> dict:
    scores, is_tp, is_fp = [], [], []
    dices, volume_errors, composition_correct = [], [], []
    n_positive = 0
    se = {"low": 0.0, "full": 0.0, "denoised": 0.0}
    n_body = 0
    for s in series:
        n_positive += int(s.reportable.sum())
        for score, j in zip(s.detection_score, s.hit):
            scores.append(score)
            is_tp.append(j >= 0 and s.reportable[j])
            is_fp.append(j < 0)
        dices += s.dice
        volume_errors += s.volume_error
        composition_correct += s.composition_correct
        n_body += s.body_voxels
        for k in se:
            se[k] += s.squared_error[k]
    n = len(series)
    is_tp, is_fp = np.array(is_tp, bool), np.array(is_fp, bool)
    mse = {k: v / max(n_body, 1) for k, v in se.items()}
    sensitivity, threshold = sensitivity_at_fp_rate(np.array(scores), is_tp, is_fp, n_positive, n)
    malignancy, malignant = scored_nodules(series)
    return {
        "ldct_sensitivity_at_1fp_ge6mm": sensitivity,
        "ldct_score_at_1fp": threshold,
        "ldct_fp_per_scan": int(is_fp.sum()) / n if n else float("nan"),
        "ldct_sensitivity_ge6mm": int(is_tp.sum()) / n_positive if n_positive else float("nan"),
        "ldct_seg_dice_ge6mm": float(np.mean(dices)) if dices else float("nan"),
        "ldct_volume_abs_err_median_ge6mm": float(np.median(volume_errors)) if volume_errors else float("nan"),
        "ldct_malignancy_auc": roc_auc(malignancy, malignant),
        "ldct_composition_accuracy": float(np.mean(composition_correct)) if composition_correct else float("nan"),
        "denoise_psnr_gain_db_25pct": psnr_db(mse["denoised"]) - psnr_db(mse["low"]),
        "denoise_25pct_minus_fulldose_psnr_db": psnr_db(mse["denoised"]) - psnr_db(mse["full"]),
        "ece_nodule": expected_calibration_error(malignancy, malignant) if len(malignancy) else float("nan"),
        "n_ldct": n,
        "ldct_nodules_ge6mm": n_positive,
        "ldct_nodules_scored_malignancy": len(malignancy),
        "denoise_psnr_db_25pct": psnr_db(mse["low"]),
        "denoise_psnr_db_denoised": psnr_db(mse["denoised"]),
        "denoise_psnr_db_fulldose": psnr_db(mse["full"]),
        "ldct_seconds_per_series": sum(s.seconds for s in series) / n if n else float("nan"),
    }
