"""The served-path calibration of the mammography models, without PyTorch
(``.venv/bin/python -m training.mammo_calibration``: refit the exam combination of the models in the
repository; training/mammo_train.py uses the same functions after it exports new weights).

The exam combination (ingest/mammo.py ``exam_probability``) and the exam-score decile edges are
fitted on the served view probabilities (ONNX Runtime, ingest/steps/mammo.py's test-time
augmentation) of full-size exams EXAM_CALIBRATION_SEEDS: training-side seeds, below the evaluation
range that starts at 1,000,000.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml

from ingest.mammo import exam_features
from ingest.steps.mammo import augment, merge_augmented
from oncostream.evaluation.mammo import roc_auc
from oncostream.model_contract import record_weights
from oncostream.settings import DEFAULT_MODEL_REPOSITORY
from training import mammo_data
from training.calibration import fit_logistic

# full-size exams for the exam combination and the score edges (screening sends full-size views);
# 200 of them gave a noisy fit (exam ECE 0.079 on the 1,000 evaluation exams), 800 give 0.043
EXAM_CALIBRATION_SEEDS = range(95_100, 95_900)


def log(message: str) -> None:
    print(f"[mammo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def served_view_probabilities(repository: Path, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-view malignancy, heatmap (model orientation) and density as served (ONNX Runtime, the flip
    test-time augmentation merged by ingest/steps/mammo.py) -> ([V], [V, 32, 26], [V, 4])."""
    import onnxruntime as ort

    cls = ort.InferenceSession(str(repository / "mammo_classifier" / "1" / "model.onnx"),
                               providers=["CPUExecutionProvider"])
    den = ort.InferenceSession(str(repository / "mammo_density" / "1" / "model.onnx"),
                               providers=["CPUExecutionProvider"])
    probs, maps, dens = [], [], []
    for start in range(0, len(images), 4):
        batch = augment(images.take(np.arange(start, start + 4))[:, None])
        m, h = cls.run(["malignancy", "heatmap"], {"image": batch})
        (d,) = den.run(["density"], {"image": batch})
        p, h, d, _ = merge_augmented(m, h, d)
        probs.append(p)
        maps.append(h)
        dens.append(d)
    return np.concatenate(probs), np.concatenate(maps), np.concatenate(dens)


def write_contracts(repository: Path, classifier_calibration: dict[str, float],
                    density_calibration: dict[str, float]) -> None:
    shape = [-1, 1, *mammo_data.MODEL_SHAPE]
    # the canonical frame the models read is defined by ingest/canonical/mammo.py; its description
    # in the contract stays as written there
    preprocessing = load_contract(repository, "mammo_classifier")["preprocessing"]
    image = {"name": "image", "dtype": "FP32", "shape": shape, "description": "one preprocessed view"}
    contracts = {
        "mammo_classifier": {
            "name": "mammo_classifier", "version": "1",
            "task": "per-view malignancy probability and coarse lesion heatmap (mammography)",
            "inputs": [image],
            "outputs": [
                {"name": "malignancy", "dtype": "FP32", "shape": [-1, 1],
                 "description": "calibrated probability that the view shows a malignant lesion"},
                {"name": "heatmap", "dtype": "FP32", "shape": [-1, 1, 32, 26],
                 "description": "lesion probability per 16x16 cell of the model input (flipped like it)"},
            ],
            "preprocessing": preprocessing, "max_batch_size": 8, "calibration": classifier_calibration,
        },
        "mammo_density": {
            "name": "mammo_density", "version": "1", "task": "BI-RADS breast density a-d per view",
            "inputs": [image],
            "outputs": [{"name": "density", "dtype": "FP32", "shape": [-1, 4],
                         "description": "calibrated probabilities of density a, b, c, d"}],
            "preprocessing": preprocessing, "max_batch_size": 8, "calibration": density_calibration,
        },
    }
    for name, contract in contracts.items():
        (repository / name).mkdir(parents=True, exist_ok=True)
        (repository / name / "contract.yaml").write_text(yaml.safe_dump(contract, sort_keys=False))
        record_weights(name, repository)


def exam_calibration_set(workers: int) -> mammo_data.MammoExamples:
    return mammo_data.load(mammo_data.build(EXAM_CALIBRATION_SEEDS, "full", workers))


def fit_exam_combination(repository: Path, exams: mammo_data.MammoExamples) -> dict[str, float]:
    """Logistic exam combination of the served view probabilities (ingest/mammo.py exam_features)
    and the exam-score decile edges of the resulting probability."""
    view_probs, _, _ = served_view_probabilities(repository, exams.images)
    lateralities = [k[0] for k in mammo_data.VIEW_KEYS]
    features = np.array([exam_features(list(p), lateralities) for p in view_probs.reshape(-1, 4)])
    w_mean, w_max, bias = fit_logistic(features, exams.exam_malignant)
    exam_p = 1 / (1 + np.exp(-(features @ np.array([w_mean, w_max]) + bias)))
    edges = np.quantile(exam_p, np.linspace(0.1, 0.9, 9))
    log(f"exam combination w_mean={w_mean:.3f} w_max={w_max:.3f} bias={bias:.3f} on {len(exam_p)} full-size exams; "
        f"their exam AUC {roc_auc(exam_p, exams.exam_malignant):.3f}")
    return {"exam_weight_breast_mean": float(w_mean), "exam_weight_view_max": float(w_max), "exam_bias": float(bias),
            **{f"exam_score_edge_{k + 1}": float(e) for k, e in enumerate(edges)}}


def recalibrate_exam(repository: Path, workers: int) -> None:
    """Refit only the exam combination of the exported models (keeps view Platt, region threshold,
    density temperature): ``--exam-calibration-only``."""
    classifier = load_calibration(repository, "mammo_classifier")
    density = load_calibration(repository, "mammo_density")
    classifier.update(fit_exam_combination(repository, exam_calibration_set(workers)))
    write_contracts(repository, classifier, density)


def load_contract(repository: Path, model: str) -> dict:
    return yaml.safe_load((repository / model / "contract.yaml").read_text())


def load_calibration(repository: Path, model: str) -> dict[str, float]:
    return load_contract(repository, model)["calibration"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=mammo_data.default_workers())
    parser.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    args = parser.parse_args(argv)
    recalibrate_exam(args.repository, args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
