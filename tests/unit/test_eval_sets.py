"""The evaluation sets of `oncostream eval` (oncostream/evaluation): disjoint ranges, and pooled
nodule-calibration phantoms that carry more nodules of the same distribution."""

import numpy as np
import pytest

from oncostream import evaluation
from oncostream.evaluation.ldct import POOLED_CAP, pooled_series_specs
from oncostream.synth.ldct import draw_nodule_specs


def test_the_default_sets_do_not_overlap_each_other_or_training():
    regular = range(evaluation.DEFAULT_FIRST_SEED,
                    evaluation.DEFAULT_FIRST_SEED + max(evaluation.DEFAULT_LDCT_SERIES, evaluation.DEFAULT_MAMMO_EXAMS))
    pooled = range(evaluation.DEFAULT_POOLED_FIRST_SEED,
                   evaluation.DEFAULT_POOLED_FIRST_SEED + evaluation.DEFAULT_POOLED_SERIES)
    assert regular.stop <= pooled.start and regular.start >= 1_000_000


def _summary(specs: list[dict]) -> tuple[float, float, float]:
    malignant = np.mean([s["malignant"] for s in specs])
    reportable = np.mean([s["diameter_mm"] >= 6 for s in specs])
    spiculated = np.mean([s["margin"] == "spiculated" for s in specs])
    return malignant, reportable, spiculated


def test_pooled_phantoms_hold_several_times_the_nodules_from_the_same_distribution():
    seeds = range(2_100_000, 2_101_500)
    pooled = [pooled_series_specs(s) for s in seeds]
    regular = [draw_nodule_specs(np.random.default_rng([s, 0x1DC7])) for s in seeds]
    counts = [len(p) for p in pooled]
    assert max(counts) == POOLED_CAP and np.mean(counts) > 3 * np.mean([len(r) for r in regular])
    # the same per-nodule mix (malignant share, >= 6 mm share, spiculated share) within sampling noise
    a = _summary([s for p in pooled for s in p])
    b = _summary([s for r in regular for s in r])
    assert np.allclose(a, b, atol=0.04), (a, b)
    assert pooled_series_specs(2_000_000) == pooled_series_specs(2_000_000)


def test_progress_is_logged_every_so_many_seeds_and_at_the_end(caplog):
    caplog.set_level("INFO", logger="oncostream.evaluation")
    assert list(evaluation.with_progress(range(10, 15), "things", every=2)) == [10, 11, 12, 13, 14]
    assert [r.getMessage() for r in caplog.records] == [
        "things: 2 of 5 done", "things: 4 of 5 done", "things: 5 of 5 done"]


def test_several_profiles_in_one_run_give_each_its_keys_and_one_modality_only_its_own(monkeypatch, tmp_path):
    """`oncostream eval --profile default,thick_2.5mm,larger_detector --modality ct`: the LDCT figures of
    the default (no suffix) and of the CT profile (suffixed); the mammography profile and models untouched."""
    import argparse
    import json

    from oncostream.evaluation import ldct, mammo

    calls = []

    def ldct_figures(seeds, size, repository, profiles=("default",)):
        calls.append(("CT", tuple(profiles), repository))
        return {"ldct_auc": 0.9, **{f"ldct_auc_{p}": 0.8 for p in profiles if p != "default"}}

    monkeypatch.setattr(ldct, "evaluate_ldct", ldct_figures)
    monkeypatch.setattr(ldct, "evaluate_nodule_calibration", lambda *a, **k: {"ldct_pooled_ece": 0.04})
    monkeypatch.setattr(mammo, "evaluate_mammo", lambda *a, **k: calls.append(("MG",)) or {"mammo_auc": 0.9})
    monkeypatch.setenv("ONCOSTREAM_MODEL_REPOSITORY", str(tmp_path))
    json_path = tmp_path / "eval.json"
    args = argparse.Namespace(seeds=range(1, 3), pooled_seeds=range(0), json_path=json_path, size="small",
                              profile="default,thick_2.5mm,larger_detector", modality="ct", rounds=None)
    assert evaluation.main(args) == 0
    # one LDCT pass for both profiles (each phantom generated once), from the configured repository
    assert calls == [("CT", ("default", "thick_2.5mm"), tmp_path)]
    payload = json.loads(json_path.read_text())
    assert payload["model_repository"] == str(tmp_path)
    assert payload["ldct_auc_thick_2.5mm"] == 0.8 and "mammo_auc" not in payload
    assert evaluation.profiles_of("all")[0] == "default" and "smooth_kernel" in evaluation.profiles_of("all")
    with pytest.raises(SystemExit, match="no_such_vendor"):
        evaluation.profiles_of("default,no_such_vendor")


def test_an_empty_seed_range_evaluates_only_the_pooled_set(monkeypatch, tmp_path):
    """`oncostream eval --modality ct --seeds 0:0 --pooled-seeds A:B --profile sharp_kernel`: the pooled
    calibration set alone, read as that profile; an empty range is not the default range."""
    import argparse

    from oncostream.evaluation import ldct

    calls = []
    monkeypatch.setattr(ldct, "evaluate_ldct", lambda *a, **k: calls.append("regular") or {})
    def pooled(seeds, size, repository, profiles):
        calls.append(("pooled", seeds, tuple(profiles)))
        return {}

    monkeypatch.setattr(ldct, "evaluate_nodule_calibration", pooled)
    args = argparse.Namespace(seeds=range(0, 0), pooled_seeds=range(5, 7), json_path=None, size="small",
                              profile="sharp_kernel", modality="ct", rounds=None)
    assert evaluation.main(args) == 0
    assert calls == [("pooled", range(5, 7), ("sharp_kernel",))]


def test_mammography_profiles_are_read_from_one_phantom_each_with_suffixed_keys():
    from oncostream.evaluation.mammo import evaluate_mammo

    figures = evaluate_mammo(range(1000000, 1000006), "small", profiles=("default", "monochrome1"))
    assert figures["n_mammo"] == figures["n_mammo_monochrome1"] == 6
    # an exact re-expression: the same exams read the same
    assert figures["mammo_exam_auc_monochrome1"] == pytest.approx(figures["mammo_exam_auc"], abs=1e-6)
    assert "mammo_localization_rate" in figures and "mammo_localization_rate_monochrome1" in figures


def test_pooled_calibration_reads_each_phantom_as_every_ct_profile():
    from oncostream.evaluation.ldct import evaluate_nodule_calibration

    figures = evaluate_nodule_calibration(range(2_000_000, 2_000_003), "small",
                                          profiles=("default", "reverse_order"))
    assert figures["n_ldct_pooled"] == figures["n_ldct_pooled_reverse_order"] == 3
    # an exact re-expression: the same nodules, read the same
    assert figures["ldct_nodules_scored_pooled_reverse_order"] == figures["ldct_nodules_scored_pooled"] > 0
    assert figures["ece_nodule_pooled_reverse_order"] == pytest.approx(figures["ece_nodule_pooled"], abs=1e-6)
