"""Fit the segmenter's malignancy recalibration for thick slices (ingest/ldct.py thick_slice_malignancy).

    .venv/bin/python -m training.thick_calibration [--seeds 2100000:2100080] [--repository DIR]

The segmenter was trained and Platt-calibrated on thin slices (1-1.25 mm); read on 2.5 mm slices its
malignancy probabilities were measured off calibration (pooled ECE 0.056 against 0.05, README Vendor
conformance). This reads calibration phantoms, never evaluated on (pooled nodule draws as in
``oncostream eval --pooled-seeds``, seeds 2 100 000+, apart from the evaluation's 2 000 000-2 000 199 and
every training and calibration range in training/), re-expressed with 2.5 mm slices (the
``thick_2.5mm`` vendor profile) through the served path, and fits a Platt scaling of the served
probability of every hit true nodule, pulled towards leaving it as it is (training/calibration.py
fit_logistic). It is composed with any recalibration already in the contract (the served
probabilities it fits on already carry it), so a rerun refines rather than stacks, and written into
the ldct_nodule_segmenter contract's calibration (part of the model's release: new output UIDs).

numpy, scipy and ONNX Runtime only (no torch). Each phantom's scores are kept under
.cache/thick_calibration/, so a stopped run resumes where it stopped. Refit after any segmenter export
(training/ldct_train.py export_segmenter drops the keys, since they belong to the old weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import logit

from ingest.ldct import THICK_BIAS, THICK_SCALE
from oncostream.model_contract import load_contract, record_calibration
from oncostream.settings import DEFAULT_MODEL_REPOSITORY, REPO_ROOT
from training.calibration import fit_logistic

SEEDS = range(2_100_000, 2_100_080)
PROFILE = "thick_2.5mm"
CACHE = REPO_ROOT / ".cache" / "thick_calibration"


def phantom_scores(seed: int, run_model) -> dict:
    """Served malignancy probability and truth of every hit true nodule of one calibration phantom."""
    from oncostream.evaluation.ldct import pooled_series_specs, score_profile_series, scored_nodules
    from oncostream.synth.ldct import make_ldct_phantom

    phantom = make_ldct_phantom(seed, size="full", nodules=pooled_series_specs(seed))
    p, y = scored_nodules([score_profile_series(phantom, run_model, PROFILE)])
    return {"seed": seed, "p": p.tolist(), "y": y.astype(int).tolist()}


def compose(fitted: tuple[float, float], current: dict[str, float]) -> dict[str, float]:
    """``fitted`` (a, b) applied on top of the contract's recalibration (scale s, bias c):
    a * (s * logit + c) + b."""
    a, b = fitted
    scale, bias = current.get(THICK_SCALE, 1.0), current.get(THICK_BIAS, 0.0)
    return {THICK_SCALE: a * scale, THICK_BIAS: a * bias + b}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default=f"{SEEDS.start}:{SEEDS.stop}", help="START:STOP")
    parser.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    args = parser.parse_args(argv)
    from oncostream.evaluation.ldct import LdctModels

    start, stop = (int(v) for v in args.seeds.split(":"))
    contract = load_contract("ldct_nodule_segmenter", args.repository)
    cache = CACHE / f"{contract.release}-{PROFILE}"  # scores depend on the weights and the calibration
    cache.mkdir(parents=True, exist_ok=True)
    run_model = LdctModels(args.repository)
    rows = []
    for seed in range(start, stop):
        path = cache / f"{seed}.json"
        if not path.exists():
            path.write_text(json.dumps(phantom_scores(seed, run_model)))
        rows.append(json.loads(path.read_text()))
        print(json.dumps({"seed": seed, "nodules": len(rows[-1]["p"])}), flush=True)
    p = np.concatenate([np.asarray(r["p"], float) for r in rows])
    y = np.concatenate([np.asarray(r["y"], float) for r in rows])
    a, b = fit_logistic(logit(np.clip(p, 1e-6, 1 - 1e-6))[:, None], y, prior=np.array([1.0, 0.0]), l2=1e-3)
    calibration = {**contract.calibration, **compose((float(a), float(b)), contract.calibration)}
    record_calibration("ldct_nodule_segmenter", calibration, args.repository)
    print(json.dumps({"phantoms": len(rows), "nodules": int(len(p)), "malignant": int(y.sum()),
                      "platt_a": round(float(a), 4), "platt_b": round(float(b), 4), "calibration": calibration}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
