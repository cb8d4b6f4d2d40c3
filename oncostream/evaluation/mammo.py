"""Mammography half of ``oncostream eval``: fresh phantoms through the committed models.

Each phantom exam goes through the serving steps (ingest/steps/mammo.py: DALI preprocessing, ONNX
Runtime, flip test-time augmentation) and the exam-level combination of ingest/mammo.py, and is
scored against its ground truth:

- ``mammo_exam_auc``: ROC AUC of the exam malignancy probability vs. "exam holds a malignant lesion";
- ``mammo_density_kappa``: Cohen's kappa (unweighted) of the exam density (argmax of the mean over
  views) vs. the phantom's category; ``mammo_density_kappa_quadratic`` is the weighted variant;
- ``ece_mammo``: expected calibration error of the exam probability (10 equal-width bins);
- ``mammo_view_auc``: per-view AUC; ``mammo_localization_rate``: fraction of views with a malignant
  lesion whose best region's bbox overlaps the lesion's true bbox;
- ``n_mammo``: exams evaluated; ``mammo_seconds_per_exam``: mean wall time of the model steps;
- ``<key>_ci95`` for the exam AUC and ECE: percentile bootstrap over exams (stats.py);
- ``ece_mammo_if_calibrated`` (and ``_p95``): the ECE a perfectly calibrated model with these
  probabilities would show on this many exams (stats.py ece_if_calibrated): the sampling floor.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ingest.mammo import exam_probability, heatmap_regions
from ingest.steps import mammo as steps
from oncostream.evaluation import with_progress
from oncostream.evaluation.stats import bootstrap_ci95, ece_if_calibrated, expected_calibration_error
from oncostream.model_contract import load_contract, onnx_path
from oncostream.settings import DEFAULT_MODEL_REPOSITORY

VIEW_KEYS = ("LCC", "LMLO", "RCC", "RMLO")
DENSITIES = ("a", "b", "c", "d")


class _Models:
    """The two mammography ONNX models in ONNX Runtime, as ``run_model`` for the steps."""

    def __init__(self, repository: Path):
        import onnxruntime as ort

        self._sessions = {name: ort.InferenceSession(str(onnx_path(name, repository)),
                                                     providers=["CPUExecutionProvider"])
                          for name in (steps.CLASSIFIER, steps.DENSITY)}

    def __call__(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._sessions[name]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))


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


def evaluate_mammo(seeds: range, size: str, repository: Path = DEFAULT_MODEL_REPOSITORY) -> dict:
    """Metrics of the committed mammography models on the phantoms of ``seeds`` (see module doc)."""
    from oncostream.synth.mammo import make_mammo_phantom

    run_model = _Models(repository)
    calibration = load_contract("mammo_classifier", repository).calibration
    threshold = calibration.get("region_threshold", 0.5)
    exam_p, exam_y, dens_pred, dens_true, view_p, view_y = [], [], [], [], [], []
    localized, malignant_views, seconds = 0, 0, 0.0
    for seed in with_progress(seeds, "mammography exams", every=100):
        phantom = make_mammo_phantom(seed, size=size)
        truth = phantom.truth
        images = [phantom.views[k].astype(np.float32) for k in VIEW_KEYS]
        lateralities = [k[0] for k in VIEW_KEYS]
        started = time.perf_counter()
        raw = steps.run(images, lateralities, [float(2 ** phantom.bits_stored - 1)] * 4, run_model)
        seconds += time.perf_counter() - started
        exam_p.append(exam_probability([float(p) for p in raw.malignancy], lateralities, calibration))
        exam_y.append(truth.malignant)
        dens_pred.append(int(raw.density.mean(axis=0).argmax()))
        dens_true.append(DENSITIES.index(truth.density))
        for k, key in enumerate(VIEW_KEYS):
            boxes = [tuple(v.bbox_px) for lesion in truth.lesions if lesion.malignant and lesion.laterality == key[0]
                     for v in lesion.views if v.view == key[1:]]
            view_p.append(float(raw.malignancy[k]))
            view_y.append(bool(boxes))
            if boxes:
                malignant_views += 1
                regions = heatmap_regions(raw.heatmaps[k], images[k].shape, threshold)
                if regions and any(_overlaps(regions[0][2], box) for box in boxes):
                    localized += 1
    exam_p, exam_y = np.array(exam_p), np.array(exam_y)

    def exam_figures(idx: np.ndarray) -> dict[str, float]:
        return {"mammo_exam_auc": roc_auc(exam_p[idx], exam_y[idx]),
                "ece_mammo": expected_calibration_error(exam_p[idx], exam_y[idx])}

    n = len(exam_p)
    return {
        **exam_figures(np.arange(n)),
        "mammo_density_kappa": cohen_kappa(np.array(dens_pred), np.array(dens_true)),
        "n_mammo": n,
        "mammo_density_kappa_quadratic": cohen_kappa(np.array(dens_pred), np.array(dens_true), weights="quadratic"),
        "mammo_view_auc": roc_auc(np.array(view_p), np.array(view_y)),
        "mammo_localization_rate": localized / malignant_views if malignant_views else float("nan"),
        "mammo_seconds_per_exam": seconds / n if n else float("nan"),
        **bootstrap_ci95(n, exam_figures, ("mammo_exam_auc", "ece_mammo")),
        **ece_if_calibrated(exam_p, "ece_mammo"),
    }


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
