"""Fit the segmenter's malignancy recalibration for thick slices (ingest/ldct.py thick_slice_malignancy).

    .venv/bin/python -m training.thick_calibration [--seeds 2100000:2100060] [--repository DIR]

The segmenter was trained and Platt-calibrated on thin slices (1-1.25 mm); read on 2.5 mm slices its
malignancy probabilities were measured off calibration (pooled ECE 0.056 against 0.05, the same phantoms
read thin 0.044: README Vendor conformance). A Platt fit of the thick probabilities to the labels of 80
calibration phantoms (424 nodules) followed that set's sampling noise and made the evaluation worse
(0.071): with a few hundred 0/1 labels the fitted shift is mostly noise.

This fit harmonises instead of recalibrating against labels. Each calibration phantom (pooled nodule
draws as in ``oncostream eval --pooled-seeds``, seeds 2 100 000+, apart from the evaluation's
2 000 000-2 000 199 and every training and calibration range in training/) is read twice through the
served path: as written (1.25 mm) and re-expressed with 2.5 mm slices (the ``thick_2.5mm`` vendor
profile). For every true nodule both reads hit, the thin read's probability is the target of the thick
one: a Platt map of the thick probability is fitted to those soft targets (cross-entropy,
training/calibration.py fit_logistic, pulled towards leaving it as it is), so a thick series reads as
the thin reconstruction of the same anatomy would. The thin read is what the served calibration was
fitted for; pairing the same nodules removes the label noise, leaving only how the two reads differ.

It is composed with any recalibration already in the contract (the served thick probabilities it fits
carry it), so a rerun refines rather than stacks, and written into the ldct_nodule_segmenter
contract's calibration (part of the model's release: new output UIDs). numpy, scipy and ONNX Runtime
only (no torch). Each phantom's pairs are kept under .cache/thick_calibration/, so a stopped run
resumes where it stopped. Refit after any segmenter export (training/ldct_train.py export_segmenter
drops the keys, since they belong to the old weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import expit, logit

from ingest.ldct import THICK_BIAS, THICK_SCALE
from oncostream.model_contract import load_contract, record_calibration
from oncostream.settings import DEFAULT_MODEL_REPOSITORY, REPO_ROOT
from training.calibration import fit_logistic

SEEDS = range(2_100_000, 2_100_060)
PROFILE = "thick_2.5mm"
CACHE = REPO_ROOT / ".cache" / "thick_calibration"


def paired_reads(seed: int, run_model) -> dict:
    """Every true nodule of one calibration phantom that both reads hit: its index, the thin and the
    thick read's served malignancy probability, and its truth."""
    from oncostream.evaluation.ldct import pooled_series_specs, score_phantom, score_profile_series
    from oncostream.synth.ldct import make_ldct_phantom

    phantom = make_ldct_phantom(seed, size="full", nodules=pooled_series_specs(seed))
    thin, thick = score_phantom(phantom, run_model), score_profile_series(phantom, run_model, PROFILE)
    thin_p = {int(j): float(p) for j, p in zip(thin.hit, thin.malignancy) if j >= 0}
    thick_p = {int(j): float(p) for j, p in zip(thick.hit, thick.malignancy) if j >= 0}
    both = sorted(thin_p.keys() & thick_p.keys())
    return {"seed": seed, "nodule": both, "thin": [thin_p[j] for j in both], "thick": [thick_p[j] for j in both],
            "y": [int(thin.truth_malignant[j]) for j in both]}


def compose(fitted: tuple[float, float], current: dict[str, float]) -> dict[str, float]:
    """``fitted`` (a, b) applied on top of the contract's recalibration (scale s, bias c):
    a * (s * logit + c) + b."""
    a, b = fitted
    scale, bias = current.get(THICK_SCALE, 1.0), current.get(THICK_BIAS, 0.0)
    return {THICK_SCALE: a * scale, THICK_BIAS: a * bias + b}


def fit_harmonisation(thick: np.ndarray, thin: np.ndarray) -> tuple[float, float]:
    """Platt map (a, b) of the thick probabilities whose output is closest, in cross-entropy, to the
    thin read's probabilities of the same nodules."""
    a, b = fit_logistic(logit(np.clip(thick, 1e-6, 1 - 1e-6))[:, None], np.asarray(thin, np.float64),
                        prior=np.array([1.0, 0.0]), l2=1e-3)
    return float(a), float(b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default=f"{SEEDS.start}:{SEEDS.stop}", help="START:STOP")
    parser.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--collect-only", action="store_true", help="read and cache the phantoms, fit nothing")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per run (0: every core); "
                        "with --collect-only, processes on disjoint --seeds ranges share the cache")
    args = parser.parse_args(argv)
    from oncostream.evaluation.ldct import LdctModels
    from oncostream.evaluation.stats import ece_if_calibrated, expected_calibration_error

    start, stop = (int(v) for v in args.seeds.split(":"))
    contract = load_contract("ldct_nodule_segmenter", args.repository)
    cache = CACHE / f"{contract.release}-{PROFILE}-paired"  # reads depend on the weights and the calibration
    cache.mkdir(parents=True, exist_ok=True)
    run_model = LdctModels(args.repository, threads=args.threads)
    rows = []
    for seed in range(start, stop):
        path = cache / f"{seed}.json"
        if not path.exists():
            path.write_text(json.dumps(paired_reads(seed, run_model)))
        rows.append(json.loads(path.read_text()))
        print(json.dumps({"seed": seed, "paired_nodules": len(rows[-1]["y"])}), flush=True)
    if args.collect_only:
        return 0
    thin, thick, y = (np.concatenate([np.asarray(r[k], float) for r in rows]) for k in ("thin", "thick", "y"))
    a, b = fit_harmonisation(thick, thin)
    harmonised = expit(a * logit(np.clip(thick, 1e-6, 1 - 1e-6)) + b)
    calibration = {**contract.calibration, **compose((a, b), contract.calibration)}
    record_calibration("ldct_nodule_segmenter", calibration, args.repository)
    print(json.dumps({
        "phantoms": len(rows), "paired_nodules": int(len(y)), "malignant": int(y.sum()),
        "platt_a": round(a, 4), "platt_b": round(b, 4), "calibration": calibration,
        "mean_p": {"thin": round(float(thin.mean()), 4), "thick": round(float(thick.mean()), 4),
                   "harmonised": round(float(harmonised.mean()), 4), "prevalence": round(float(y.mean()), 4)},
        # in-sample, for the record: the evaluation is `oncostream eval --pooled-seeds` on other phantoms
        "ece": {"thin": expected_calibration_error(thin, y), "thick": expected_calibration_error(thick, y),
                "harmonised": expected_calibration_error(harmonised, y),
                **ece_if_calibrated(harmonised, "harmonised")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
