"""Lung-RADS v2022 rules, one table row per rule (ACR Lung-RADS v2022 assessment categories)."""

from __future__ import annotations

import pytest

from postprocess.lungrads import (
    NoduleMeasurement,
    PriorNodule,
    apply_4x,
    baseline_category,
    exam_category,
    follow_up_category,
    is_growing,
    match_priors,
    volume_doubling_time_days,
    nodule_category,
    round_mm,
)

N = NoduleMeasurement

BASELINE = [
    # (rule cited, nodule, expected)
    ("v2022 calcified (benign pattern) -> 1", N(12.0, "calcified"), "1"),
    ("v2022 solid <6 mm baseline -> 2", N(5.9, "solid"), "2"),
    ("v2022 solid 5.96 mm rounds to 6.0 -> 3", N(5.96, "solid"), "3"),
    ("v2022 solid 5.94 mm rounds to 5.9 -> 2", N(5.94, "solid"), "2"),
    ("v2022 solid 6-<8 mm baseline -> 3", N(6.0, "solid"), "3"),
    ("v2022 solid 7.9 mm baseline -> 3", N(7.9, "solid"), "3"),
    ("v2022 solid 8-<15 mm baseline -> 4A", N(8.0, "solid"), "4A"),
    ("v2022 solid 14.9 mm baseline -> 4A", N(14.9, "solid"), "4A"),
    ("v2022 solid >=15 mm baseline -> 4B", N(15.0, "solid"), "4B"),
    ("v2022 part-solid <6 mm total -> 2", N(5.9, "part_solid", solid_component_mm=3.0), "2"),
    ("v2022 part-solid >=6 mm total, solid component <6 mm -> 3", N(10.0, "part_solid", solid_component_mm=5.9), "3"),
    ("v2022 part-solid solid component 6-<8 mm -> 4A", N(12.0, "part_solid", solid_component_mm=6.0), "4A"),
    ("v2022 part-solid solid component >=8 mm -> 4B", N(16.0, "part_solid", solid_component_mm=8.0), "4B"),
    ("v2022 ground-glass <30 mm -> 2", N(29.9, "ground_glass"), "2"),
    ("v2022 ground-glass >=30 mm -> 3", N(30.0, "ground_glass"), "3"),
]


@pytest.mark.parametrize("nodule,expected", [pytest.param(n, e, id=rule) for rule, n, e in BASELINE])
def test_baseline(nodule: NoduleMeasurement, expected: str) -> None:
    assert baseline_category(nodule) == expected


VOLUME = [
    ("v2022 solid <113 mm3 -> 2", 112.9, "2"),
    ("v2022 solid 113-<268 mm3 -> 3", 113.0, "3"),
    ("v2022 solid 268-<1767 mm3 -> 4A", 268.0, "4A"),
    ("v2022 solid >=1767 mm3 -> 4B", 1767.0, "4B"),
]


@pytest.mark.parametrize("volume,expected", [pytest.param(v, e, id=rule) for rule, v, e in VOLUME])
def test_baseline_by_volume(volume: float, expected: str) -> None:
    # the diameter (5 mm -> 2) is deliberately inconsistent: the volume must decide
    assert baseline_category(N(5.0, "solid", volume_mm3=volume), size_basis="volume") == expected


def test_part_solid_without_solid_size_uses_core_fraction() -> None:
    # documented approximation: solid component = core_fraction x total diameter
    assert baseline_category(N(14.0, "part_solid"), core_fraction=0.5) == "4A"  # 7.0 mm core
    assert baseline_category(N(14.0, "part_solid"), core_fraction=0.4) == "3"  # 5.6 mm core


FOLLOW_UP = [
    ("v2022 new solid <4 mm -> 2", N(3.9, "solid"), None, "2"),
    ("v2022 new solid 4-<6 mm -> 3", N(4.0, "solid"), None, "3"),
    ("v2022 new solid 6-<8 mm -> 4A", N(6.0, "solid"), None, "4A"),
    ("v2022 new solid >=8 mm -> 4B", N(8.0, "solid"), None, "4B"),
    ("v2022 growing solid <8 mm -> 4A", N(7.0, "solid"), PriorNodule(5.0, interval_days=365), "4A"),
    ("v2022 growing solid >=8 mm -> 4B", N(9.6, "solid"), PriorNodule(8.0, interval_days=365), "4B"),
    ("v2022 solid growth of exactly 1.5 mm is not growth -> stable 3 becomes 2",
     N(7.5, "solid"), PriorNodule(6.0, interval_days=365), "2"),
    ("v2022 stable solid 4A at follow-up -> 3", N(10.0, "solid"), PriorNodule(10.0, interval_days=90), "3"),
    ("v2022 stable solid <6 mm -> 2", N(4.0, "solid"), PriorNodule(4.0), "2"),
    ("v2022 new part-solid <6 mm total -> 3", N(5.0, "part_solid", solid_component_mm=2.0), None, "3"),
    ("v2022 new part-solid with solid component <4 mm -> 4A", N(9.0, "part_solid", solid_component_mm=3.0), None, "4A"),
    ("v2022 new part-solid with solid component >=4 mm -> 4B",
     N(9.0, "part_solid", solid_component_mm=4.0), None, "4B"),
    ("v2022 growing part-solid, solid component <4 mm -> 4A",
     N(10.0, "part_solid", solid_component_mm=3.0), PriorNodule(8.0, solid_component_mm=3.0), "4A"),
    ("v2022 growing solid component >=4 mm -> 4B",
     N(10.0, "part_solid", solid_component_mm=6.0), PriorNodule(10.0, solid_component_mm=4.0), "4B"),
    ("v2022 ground-glass >=30 mm new -> 3", N(31.0, "ground_glass"), None, "3"),
    ("v2022 ground-glass >=30 mm stable -> 2", N(31.0, "ground_glass"), PriorNodule(31.0), "2"),
    ("v2022 ground-glass <30 mm new -> 2", N(12.0, "ground_glass"), None, "2"),
    ("v2022 calcified at follow-up -> 1", N(6.0, "calcified"), None, "1"),
    # a nodule the prior read did not report but visible there in retrospect is not new
    ("v2022 seen in retrospect on the prior and stable: not new, stable 4A -> 3",
     N(10.0, "solid"), PriorNodule(9.8, index=0, seen_in_retrospect=True), "3"),
    ("v2022 seen in retrospect on the prior and growing solid <8 mm -> 4A (new 4-<6 mm would be 3)",
     N(5.5, "solid"), PriorNodule(3.5, index=0, seen_in_retrospect=True), "4A"),
]


@pytest.mark.parametrize("nodule,prior,expected",
                         [pytest.param(n, p, e, id=rule) for rule, n, p, e in FOLLOW_UP])
def test_follow_up(nodule: NoduleMeasurement, prior: PriorNodule | None, expected: str) -> None:
    assert follow_up_category(nodule, prior) == expected


@pytest.mark.parametrize("current,prior,expected", [
    pytest.param(7.6, PriorNodule(6.0, interval_days=365), True, id="v2022 +1.6 mm in 12 months grows"),
    pytest.param(7.5, PriorNodule(6.0, interval_days=365), False, id="v2022 +1.5 mm is not > 1.5 mm"),
    pytest.param(8.0, PriorNodule(6.0, interval_days=730), False, id="v2022 +2.0 mm over 24 months is 1.0 mm per 12"),
    pytest.param(7.6, PriorNodule(6.0, interval_days=90), True, id="v2022 +1.6 mm in 3 months grows"),
])
def test_growth(current: float, prior: PriorNodule, expected: bool) -> None:
    assert is_growing(current, prior) is expected


@pytest.mark.parametrize("category,probability,expected", [
    pytest.param("3", 0.9, "4X", id="v2022 4X: category 3 + suspicious (probability >= threshold)"),
    pytest.param("4A", 0.85, "4X", id="v2022 4X: category 4A at the threshold"),
    pytest.param("4B", 0.95, "4X", id="v2022 4X: category 4B + suspicious"),
    pytest.param("4B", 0.84, "4B", id="v2022 4X not applied below the threshold"),
    pytest.param("2", 0.99, "2", id="v2022 4X only for categories 3 and 4"),
    pytest.param("1", 0.99, "1", id="v2022 4X never for benign calcified"),
])
def test_4x(category: str, probability: float, expected: str) -> None:
    assert apply_4x(category, probability, threshold=0.85) == expected  # type: ignore[arg-type]


def test_nodule_category_applies_4x_after_baseline() -> None:
    assert nodule_category(N(9.0, "solid", malignancy_probability=0.9), four_x_probability=0.85) == "4X"
    assert nodule_category(N(9.0, "solid", malignancy_probability=0.9), has_prior_study=True,
                           prior=PriorNodule(9.0), four_x_probability=0.95) == "3"


@pytest.mark.parametrize("categories,incomplete,expected", [
    pytest.param([], False, "1", id="v2022 no nodules -> 1"),
    pytest.param(["2", "4A", "3"], False, "4A", id="v2022 exam category = highest nodule category"),
    pytest.param(["4B", "4X"], False, "4X", id="v2022 4X outranks 4B"),
    pytest.param(["2"], True, "0", id="v2022 incomplete exam -> 0"),
    pytest.param(["4B"], True, "4B", id="incomplete exam keeps an actionable 4B"),
])
def test_exam_category(categories: list[str], incomplete: bool, expected: str) -> None:
    assert exam_category(categories, incomplete=incomplete) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value,expected", [(5.95, 6.0), (5.949, 5.9), (0.05, 0.1), (14.96, 15.0), (7.0, 7.0)])
def test_round_to_tenth_mm(value: float, expected: float) -> None:
    assert round_mm(value) == expected


def test_unknown_composition_is_refused() -> None:
    with pytest.raises(ValueError, match="composition"):
        baseline_category(N(5.0, "fatty"))


def test_match_priors_pairs_nearest_and_marks_new_nodules() -> None:
    current = [(0.0, 0.0, 0.0), (50.0, 0.0, 0.0), (3.0, 0.0, 0.0)]
    prior = [((2.5, 0.0, 0.0), 6.0), ((0.5, 0.0, 0.0), 4.0)]
    matched = match_priors(current, prior, interval_days=365)
    assert matched[0] == PriorNodule(4.0, interval_days=365, index=1)  # nearest: 0.5 mm away
    assert matched[1] is None  # 47.5 mm from anything: new
    assert matched[2] == PriorNodule(6.0, interval_days=365, index=0)  # each prior is used once


def test_match_priors_aligns_exams_in_different_frames() -> None:
    # the patient lies 40 mm further along the table: raw coordinates match nothing (or the wrong one)
    prior = [((10.0, 0.0, 0.0), 8.0), ((-30.0, 20.0, 15.0), 6.0), ((40.0, -10.0, -20.0), 5.0)]
    shift = (2.0, -3.0, 40.0)
    current = [(p[0][0] + shift[0], p[0][1] + shift[1], p[0][2] + shift[2]) for p in prior[:2]] + [(0.0, 50.0, 0.0)]
    assert match_priors(current, prior, 365) == [None, None, None]
    # lung alignment off by 6 mm in z: within reach, and the refinement recentres on the nodules
    matched = match_priors(current, prior, 365, translation_mm=(0.0, 0.0, 34.0), refine=True)
    assert [m.index if m else None for m in matched] == [0, 1, None]


def test_match_priors_looks_back_for_nodules_no_reported_prior_matches() -> None:
    # the patient lies 8 mm further along x; the lung alignment says 0: the reported pair recentres it
    current = [(0.0, 0.0, 0.0), (50.0, 0.0, 0.0), (0.0, 40.0, 0.0), (-60.0, 0.0, 0.0)]
    reported = [((-8.0, 0.0, 0.0), 6.0)]
    lookback = [((-7.5, 0.5, 0.0), 5.5),  # the reported nodule again: never used, a reported prior comes first
                ((39.0, 0.0, 0.0), 4.0),  # 11 mm off before the recentring, 3 mm after
                ((-8.0, 52.5, 0.0), 3.0),  # 12.5 mm from the third nodule after recentring: too far
                ((-68.0, 1.0, 0.0), 7.0)]
    matched = match_priors(current, reported, 365, translation_mm=(0.0, 0.0, 0.0), refine=True, lookback=lookback)
    assert matched[0] == PriorNodule(6.0, interval_days=365, index=0)
    assert matched[1] == PriorNodule(4.0, interval_days=365, index=1, seen_in_retrospect=True)
    assert matched[2] is None  # new
    assert matched[3] == PriorNodule(7.0, interval_days=365, index=3, seen_in_retrospect=True)
    # without a reported match the lung alignment alone places them
    alone = match_priors(current[1:2], [], 365, translation_mm=(8.0, 0.0, 0.0), lookback=lookback)
    assert alone == [PriorNodule(4.0, interval_days=365, index=1, seen_in_retrospect=True)]
    assert match_priors(current, reported, 365, refine=True)[1] is None  # no look-back candidates: new


@pytest.mark.parametrize(("volume", "prior", "days", "expected"), [
    (200.0, 100.0, 365.0, 365.0),  # doubled in a year
    (400.0, 100.0, 730.0, 365.0),
    (100.0, 100.0, 365.0, None),  # no growth: no doubling time
    (80.0, 100.0, 365.0, None),
], ids=["doubled", "quadrupled-in-two-years", "stable", "shrunk"])
def test_volume_doubling_time(volume, prior, days, expected) -> None:
    result = volume_doubling_time_days(volume, prior, days)
    assert result == (pytest.approx(expected) if expected is not None else None)
