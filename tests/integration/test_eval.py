"""`oncostream eval` through the real CLI on a small fresh set: the committed ONNX models on
phantoms never trained on (training uses seeds 0-99,999), small size (128 x 128 x 48 CT at 2.65 mm,
small mammograms) so the whole run stays within a few minutes on 2 cores.

Bounds are looser than issue 3's targets (sensitivity >= 0.90 at 1 FP/scan, exam AUC >= 0.90,
denoising gain >= 3 dB at full size) because 12 series hold only ~13 nodules >= 6 mm and small
series are coarse: they catch a broken model or pipeline, not a small regression. The denoising
bound is the weakest: at 2.65 mm pixels the 25 % dose noise is already ~6 HU and the measured gain
on this set is ~0.15 dB (6.4 dB at full size, see model_repository/ldct_denoise/README.md), so the
test only asserts that the denoiser improves the image rather than passing it through or harming it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ONCOSTREAM = str(Path(sys.executable).parent / "oncostream")
SEEDS = "1000500:1000512"
POOLED_SEEDS = "2000500:2000503"  # the pooled nodule-calibration set's code path, 3 small phantoms
KEYS = ("ldct_sensitivity_at_1fp_ge6mm", "ldct_fp_per_scan", "ldct_seg_dice_ge6mm",
        "ldct_volume_abs_err_median_ge6mm", "ldct_malignancy_auc", "denoise_psnr_gain_db_25pct",
        "denoise_25pct_minus_fulldose_psnr_db", "ece_nodule", "n_ldct",
        "mammo_exam_auc", "mammo_density_kappa", "ece_mammo", "n_mammo")
# (key, bound, higher is better): loose bounds for the small CI set, see the module docstring
BOUNDS = {
    "ldct-sensitivity": ("ldct_sensitivity_at_1fp_ge6mm", 0.60, True),
    "mammo-exam-auc": ("mammo_exam_auc", 0.70, True),
    "denoise-gain": ("denoise_psnr_gain_db_25pct", 0.05, True),
}


@pytest.fixture(scope="module")
def eval_json(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    proc = subprocess.run([ONCOSTREAM, "eval", "--seeds", SEEDS, "--pooled-seeds", POOLED_SEEDS, "--size", "small",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ldct_sensitivity_at_1fp_ge6mm" in proc.stdout  # the table
    return json.loads(out.read_text())


def test_eval_json_has_every_key(eval_json):
    missing = [k for k in KEYS if k not in eval_json]
    assert not missing
    assert eval_json["n_ldct"] == 12 and eval_json["n_mammo"] == 12
    for key in ("ldct_sensitivity_at_1fp_ge6mm", "ldct_seg_dice_ge6mm", "ldct_malignancy_auc", "ece_nodule",
                "ldct_composition_accuracy",
                "mammo_exam_auc", "ece_mammo"):
        value = eval_json[key]
        assert value is None or 0.0 <= value <= 1.0, (key, value)


def test_eval_reports_bootstrap_intervals_around_the_figures(eval_json):
    for key in ("ldct_sensitivity_at_1fp_ge6mm", "mammo_exam_auc", "ece_mammo"):
        low, high = eval_json[f"{key}_ci95"]
        assert low <= eval_json[key] <= high, (key, low, eval_json[key], high)


@pytest.mark.parametrize("key,bound,higher", BOUNDS.values(), ids=BOUNDS.keys())
def test_eval_meets_the_ci_bound(eval_json, key, bound, higher):
    value = eval_json[key]
    assert value is not None, key
    assert value >= bound if higher else value <= bound, (key, value, bound)


def test_eval_reports_the_sampling_floor_under_each_ece(eval_json):
    for key in ("ece_nodule", "ece_nodule_pooled", "ece_mammo"):
        floor, p95 = eval_json[f"{key}_if_calibrated"], eval_json[f"{key}_if_calibrated_p95"]
        # 12 small exams / ~15 nodules: even a perfectly calibrated model shows a large ECE here
        assert 0.0 < floor <= p95 <= 1.0, (key, floor, p95)


def test_pooled_phantoms_score_several_nodules_each(eval_json):
    assert eval_json["n_ldct_pooled"] == 3 and eval_json["pooled_seeds"] == [2000500, 2000503]
    # the three pooled phantoms carry 19 nodules (four draws each); most are found at small size
    assert eval_json["ldct_nodules_scored_pooled"] >= 9, eval_json["ldct_nodules_scored_pooled"]
    low, high = eval_json["ece_nodule_pooled_ci95"]
    assert 0.0 <= low <= eval_json["ece_nodule_pooled"] <= high <= 1.0


def test_the_figures_do_not_depend_on_how_many_processes_score_them(tmp_path):
    """map_seeds scores phantoms in ONCOSTREAM_EVAL_WORKERS processes: one or two give the same figures
    (timings aside), in the same order."""
    import math
    import os

    figures = {}
    for workers in ("1", "2"):
        out = tmp_path / f"eval-{workers}.json"
        proc = subprocess.run([ONCOSTREAM, "eval", "--seeds", "1000500:1000503", "--pooled-seeds", "2000500:2000502",
                               "--size", "small", "--json", str(out)], capture_output=True, text=True, timeout=900,
                              env={**os.environ, "ONCOSTREAM_EVAL_WORKERS": workers})
        assert proc.returncode == 0, proc.stderr[-4000:]
        figures[workers] = {k: v for k, v in json.loads(out.read_text()).items() if "seconds" not in k}
    assert figures["1"].keys() == figures["2"].keys()
    for key, value in figures["1"].items():
        other = figures["2"][key]
        same = (isinstance(value, float) and isinstance(other, float) and math.isnan(value) and math.isnan(other))
        assert same or value == other, key
    assert figures["1"]["n_ldct"] == 3 and figures["1"]["n_ldct_pooled"] == 2
