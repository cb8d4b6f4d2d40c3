"""Mammography half of ``oncostream eval``: fresh phantoms through the committed models.

Each phantom exam is written as DICOM, optionally re-expressed as another vendor would write it
(``profiles``, oncostream/synth/vendors.py; each phantom is generated once for all of them), and goes
through the served path (ingest/mammo.py ``infer_mammo_study`` on the embedded backend: canonical
frame, DALI preprocessing, ONNX Runtime, flip test-time augmentation, exam combination); it is scored
against its ground truth:

- ``mammo_exam_auc``: ROC AUC of the exam malignancy probability vs. "exam holds a malignant lesion";
- ``mammo_density_kappa``: Cohen's kappa (unweighted) of the exam density (argmax of the mean over
  views) vs. the phantom's category; ``mammo_density_kappa_quadratic`` is the weighted variant;
- ``ece_mammo``: expected calibration error of the exam probability (10 equal-width bins);
- ``mammo_view_auc``: per-view AUC; ``mammo_localization_rate``: fraction of views with a malignant
  lesion whose best region's bbox overlaps the lesion's true bbox (default profile only: the others
  move the pixel grid the truth boxes are stated in);
- ``n_mammo``: exams evaluated; ``mammo_seconds_per_exam``: mean wall time of the model steps;
- ``<key>_ci95`` for the exam AUC and ECE: percentile bootstrap over exams (stats.py);
- ``ece_mammo_if_calibrated`` (and ``_p95``): the ECE a perfectly calibrated model with these
  probabilities would show on this many exams (stats.py ece_if_calibrated): the sampling floor.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from ingest.mammo import infer_mammo_study
from oncostream.evaluation import map_seeds
from oncostream.evaluation.stats import bootstrap_ci95, ece_if_calibrated, expected_calibration_error
from oncostream.settings import DEFAULT_MODEL_REPOSITORY

VIEW_KEYS = ("LCC", "LMLO", "RCC", "RMLO")
DENSITIES = ("a", "b", "c", "d")


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC with ties averaged; NaN when one class is absent."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cohen_kappa(predicted: np.ndarray, truth: np.ndarray, classes: int = 4, weights: str | None = None) -> float:
    """Cohen's kappa; ``weights="quadratic"`` for the ordinal variant."""
    confusion = np.zeros((classes, classes))
    np.add.at(confusion, (np.asarray(truth), np.asarray(predicted)), 1)
    i, j = np.indices((classes, classes))
    w = ((i - j) ** 2 / (classes - 1) ** 2) if weights == "quadratic" else (i != j).astype(float)
    expected = np.outer(confusion.sum(1), confusion.sum(0)) / confusion.sum()
    denominator = (w * expected).sum()
    return float(1 - (w * confusion).sum() / denominator) if denominator > 0 else 1.0


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@dataclass
class _ExamScores:
    """One profile's reads of the exams, against their ground truth."""

    profile: str
    exam_p: list[float] = field(default_factory=list)
    exam_y: list[bool] = field(default_factory=list)
    dens_pred: list[int] = field(default_factory=list)
    dens_true: list[int] = field(default_factory=list)
    view_p: list[float] = field(default_factory=list)
    view_y: list[bool] = field(default_factory=list)
    localized: int = 0
    malignant_views: int = 0
    seconds: float = 0.0

    def add(self, inference, truth) -> None:
        self.exam_p.append(inference.exam_malignancy_probability)
        self.exam_y.append(truth.malignant)
        self.dens_pred.append(int(np.argmax(inference.density_probabilities)))
        self.dens_true.append(DENSITIES.index(truth.density))
        for view in inference.views:
            boxes = [tuple(v.bbox_px) for lesion in truth.lesions
                     if lesion.malignant and lesion.laterality == view.laterality
                     for v in lesion.views if v.view == view.view]
            self.view_p.append(view.malignancy_probability)
            self.view_y.append(bool(boxes))
            if boxes and self.profile == "default":
                self.malignant_views += 1
                if view.regions and any(_overlaps(view.regions[0][2], box) for box in boxes):
                    self.localized += 1

    def merge(self, other: "_ExamScores") -> None:
        """Take in the reads of ``other`` (the same profile, scored in another process)."""
        for name in ("exam_p", "exam_y", "dens_pred", "dens_true", "view_p", "view_y"):
            getattr(self, name).extend(getattr(other, name))
        self.localized += other.localized
        self.malignant_views += other.malignant_views
        self.seconds += other.seconds

    def figures(self) -> dict[str, float]:
        exam_p, exam_y = np.array(self.exam_p), np.array(self.exam_y)

        def exam_figures(idx: np.ndarray) -> dict[str, float]:
            return {"mammo_exam_auc": roc_auc(exam_p[idx], exam_y[idx]),
                    "ece_mammo": expected_calibration_error(exam_p[idx], exam_y[idx])}

        n = len(exam_p)
        dens_pred, dens_true = np.array(self.dens_pred), np.array(self.dens_true)
        return {
            **exam_figures(np.arange(n)),
            "mammo_density_kappa": cohen_kappa(dens_pred, dens_true),
            "n_mammo": n,
            "mammo_density_kappa_quadratic": cohen_kappa(dens_pred, dens_true, weights="quadratic"),
            "mammo_view_auc": roc_auc(np.array(self.view_p), np.array(self.view_y)),
            "mammo_localization_rate": (self.localized / self.malignant_views if self.malignant_views
                                        else float("nan")),
            "mammo_seconds_per_exam": self.seconds / n if n else float("nan"),
            **bootstrap_ci95(n, exam_figures, ("mammo_exam_auc", "ece_mammo")),
            **ece_if_calibrated(exam_p, "ece_mammo"),
        }


@lru_cache(maxsize=2)
def _backend(repository: Path):
    from ingest.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(repository)


def score_exam(seed: int, size: str, repository: Path, profiles: tuple[str, ...]) -> list[_ExamScores]:
    """One phantom exam, generated once and read as each of ``profiles`` re-expresses it; runs in an
    evaluation process (map_seeds)."""
    from datetime import datetime, timezone

    from oncostream.study import Study
    from oncostream.synth.mammo import make_mammo_phantom, mammo_datasets
    from oncostream.synth.vendors import MAMMO_PROFILES

    phantom = make_mammo_phantom(seed, size=size)
    out = []
    for profile in profiles:
        scored = _ExamScores(profile)
        study = Study(study_instance_uid=phantom.truth.study_instance_uid, modality="MG",
                      datasets=MAMMO_PROFILES[profile](mammo_datasets(phantom)), arrived_at=datetime.now(timezone.utc))
        started = time.perf_counter()
        inference = infer_mammo_study(_backend(repository), study, repository)
        scored.seconds += time.perf_counter() - started
        scored.add(inference, phantom.truth)
        out.append(scored)
    return out


def evaluate_mammo(seeds: range, size: str, repository: Path = DEFAULT_MODEL_REPOSITORY,
                   profiles: Sequence[str] = ("default",)) -> dict:
    """Metrics of the mammography models of ``repository`` on the phantoms of ``seeds`` (see module
    doc), read as each of ``profiles`` re-expresses them; the keys of a profile other than the default
    carry its name (``mammo_exam_auc_pixel_pitch_0.085``). Each phantom is generated once and read as
    every profile."""
    scores = {profile: _ExamScores(profile) for profile in profiles}
    score = partial(score_exam, size=size, repository=repository, profiles=tuple(profiles))
    for exam in map_seeds(score, seeds, f"mammography exams ({','.join(profiles)})", every=100):
        for scored in exam:
            scores[scored.profile].merge(scored)
    results = {}
    for profile, scored in scores.items():
        figures = scored.figures()
        results.update(figures if profile == "default" else {f"{k}_{profile}": v for k, v in figures.items()})
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m oncostream.evaluation.mammo --seeds A:B --size small|full [--json FILE]``: the
    mammography half of ``oncostream eval`` alone (the figures in the model cards)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--seeds", default="1000000:1000024", metavar="A:B")
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--json", type=Path, default=None, dest="json_path", metavar="FILE")
    args = parser.parse_args(argv)
    first, _, stop = args.seeds.partition(":")
    results = evaluate_mammo(range(int(first), int(stop)), args.size)
    text = json.dumps({"seeds": [int(first), int(stop)], "size": args.size, **results}, indent=2)
    print(text)
    if args.json_path is not None:
        args.json_path.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
