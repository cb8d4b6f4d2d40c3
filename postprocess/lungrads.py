"""Lung-RADS v2022 nodule and exam categories (ACR Lung-RADS v2022, baseline and follow-up rules).

https://www.acr.org/Clinical-Resources/Clinical-Tools-and-Reference/Reporting-and-Data-Systems/Lung-RADS

Sizes are mean diameters rounded to the nearest 0.1 mm before comparison, as v2022 prescribes;
volume thresholds (solid nodules) are the v2022 volume equivalents and apply when a program
chooses ``size_basis: volume``. Growth is an increase in mean diameter of more than 1.5 mm within
12 months. Margin features (spiculation, lymphadenopathy) are not produced by our models, so the
only 4X trigger available is a malignancy probability at or above the program's threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from oncostream.contracts import LungRads

SizeBasis = Literal["diameter", "volume"]

# exam category is the most severe nodule category; "0" (incomplete) is handled by the caller
_ORDER: dict[str, int] = {"0": -1, "1": 0, "2": 1, "3": 2, "4A": 3, "4B": 4, "4X": 5}

GROWTH_THRESHOLD_MM = 1.5  # v2022: increase in mean diameter > 1.5 mm within 12 months
GROWTH_WINDOW_DAYS = 365


@dataclass(frozen=True)
class NoduleMeasurement:
    """What Lung-RADS needs of one nodule; ``solid_component_mm`` only matters for part-solid."""

    mean_diameter_mm: float
    composition: str  # solid | part_solid | ground_glass | calcified
    volume_mm3: float | None = None
    solid_component_mm: float | None = None
    malignancy_probability: float = 0.0


@dataclass(frozen=True)
class PriorNodule:
    """One nodule of a prior study, already matched to a current nodule (same tracking UID or location).

    ``index`` is its position in the prior nodules given to match_priors (None when built by hand), or, when
    ``seen_in_retrospect``, in its look-back candidates: the prior read did not report the nodule, but it is
    visible there below the detector's operating point and measured from that detection. v2022: a nodule
    visible in retrospect on the prior is not new; the growth and stability rules apply."""

    mean_diameter_mm: float
    solid_component_mm: float | None = None
    interval_days: float = 365.0
    index: int | None = None
    seen_in_retrospect: bool = False


def _greedy_pairs(current: Sequence[Sequence[float]], prior: Sequence[Sequence[float]],
                  shift: Sequence[float], max_distance_mm: float) -> dict[int, int]:
    pairs = sorted((math.dist(c, [p[k] + shift[k] for k in range(3)]), i, j)
                   for i, c in enumerate(current) for j, p in enumerate(prior))
    matched: dict[int, int] = {}
    used: set[int] = set()
    for distance, i, j in pairs:
        if distance > max_distance_mm:
            break
        if i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    return matched


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def match_priors(current_centers_mm: Sequence[tuple[float, float, float]],
                 prior_nodules: Sequence[tuple[tuple[float, float, float], float]], interval_days: float, *,
                 max_distance_mm: float = 10.0, translation_mm: Sequence[float] = (0.0, 0.0, 0.0),
                 refine: bool = False,
                 lookback: Sequence[tuple[tuple[float, float, float], float]] = ()) -> list[PriorNodule | None]:
    """Pair each current nodule with the nearest unused prior nodule (centre, mean diameter) within reach.

    Greedy by distance, each prior used once; None marks a new nodule. Two exams' patient coordinates
    are not one frame: ``translation_mm`` (current minus prior, e.g. from aligning the lung fields) is
    added to every prior centre first. ``refine`` then re-centres that translation on the median
    offset of the pairs found and matches again (translation-only point registration on the nodules
    themselves; it corrects what the lung alignment left, a few millimetres).

    ``lookback`` (centre, mean diameter): the prior read's detections below its operating point. A current
    nodule no prior nodule matched is then paired the same way, with the same translation and reach, with
    one of them (``seen_in_retrospect``); they never move the translation, which the reported nodules set.
    """
    shift = [float(v) for v in translation_mm]
    centres = [p[0] for p in prior_nodules]
    matched = _greedy_pairs(current_centers_mm, centres, shift, max_distance_mm)
    if refine and matched:
        for _ in range(2):
            offsets = [[current_centers_mm[i][k] - centres[j][k] for k in range(3)] for i, j in matched.items()]
            shift = [_median([o[k] for o in offsets]) for k in range(3)]
            matched = _greedy_pairs(current_centers_mm, centres, shift, max_distance_mm)
            if not matched:
                break
    matches: list[PriorNodule | None] = [
        PriorNodule(mean_diameter_mm=prior_nodules[matched[i]][1], interval_days=interval_days, index=matched[i])
        if i in matched else None for i in range(len(current_centers_mm))]
    unmatched = [i for i, m in enumerate(matches) if m is None]
    if lookback and unmatched:
        seen = _greedy_pairs([current_centers_mm[i] for i in unmatched], [c[0] for c in lookback], shift,
                             max_distance_mm)
        for position, j in seen.items():
            matches[unmatched[position]] = PriorNodule(mean_diameter_mm=lookback[j][1], interval_days=interval_days,
                                                       index=j, seen_in_retrospect=True)
    return matches


def volume_doubling_time_days(volume_mm3: float, prior_volume_mm3: float, interval_days: float) -> float | None:
    """VDT = interval x ln 2 / ln(V / V_prior), in days; None when the volume did not grow (or is unknown)."""
    if volume_mm3 <= 0 or prior_volume_mm3 <= 0 or interval_days <= 0 or volume_mm3 <= prior_volume_mm3:
        return None
    return interval_days * math.log(2.0) / math.log(volume_mm3 / prior_volume_mm3)


def round_mm(value: float) -> float:
    """v2022: measurements are rounded to the nearest 0.1 mm before categorisation (half away from zero)."""
    scaled = abs(value) * 10.0
    rounded = int(scaled + 0.5 + 1e-9) / 10.0
    return rounded if value >= 0 else -rounded


def _solid_baseline(d: float) -> LungRads:
    if d < 6.0:
        return "2"
    if d < 8.0:
        return "3"
    if d < 15.0:
        return "4A"
    return "4B"


def _solid_baseline_volume(v: float) -> LungRads:
    if v < 113.0:
        return "2"
    if v < 268.0:
        return "3"
    if v < 1767.0:
        return "4A"
    return "4B"


def _part_solid_baseline(total: float, solid: float) -> LungRads:
    if total < 6.0:
        return "2"
    if solid < 6.0:
        return "3"
    if solid < 8.0:
        return "4A"
    return "4B"


def _ground_glass_baseline(d: float) -> LungRads:
    return "2" if d < 30.0 else "3"


def solid_component_mm(nodule: NoduleMeasurement, core_fraction: float) -> float:
    """The solid component's mean diameter: measured when the model gives it, else an approximation.

    Our reference segmenter reports one mean diameter per nodule; without a measured solid core we
    approximate it as ``core_fraction`` x the total mean diameter (a program setting; the synthetic
    phantoms draw part-solid cores of 0.35-0.6 of the total diameter, mean about 0.5).
    """
    if nodule.solid_component_mm is not None:
        return round_mm(nodule.solid_component_mm)
    return round_mm(nodule.mean_diameter_mm * core_fraction)


def baseline_category(nodule: NoduleMeasurement, *, size_basis: SizeBasis = "diameter",
                      core_fraction: float = 0.5) -> LungRads:
    """Baseline (no prior) category of one nodule, before 4X."""
    d = round_mm(nodule.mean_diameter_mm)
    if nodule.composition == "calcified":
        return "1"
    if nodule.composition == "solid":
        if size_basis == "volume" and nodule.volume_mm3 is not None:
            return _solid_baseline_volume(nodule.volume_mm3)
        return _solid_baseline(d)
    if nodule.composition == "part_solid":
        return _part_solid_baseline(d, solid_component_mm(nodule, core_fraction))
    if nodule.composition == "ground_glass":
        return _ground_glass_baseline(d)
    raise ValueError(f"composition: unknown nodule composition {nodule.composition!r}")


def is_growing(current_mm: float, prior: PriorNodule) -> bool:
    """v2022 growth: mean diameter increase > 1.5 mm, scaled to a 12-month window for longer intervals."""
    delta = round_mm(current_mm) - round_mm(prior.mean_diameter_mm)
    if prior.interval_days > GROWTH_WINDOW_DAYS:
        delta *= GROWTH_WINDOW_DAYS / prior.interval_days
    return delta > GROWTH_THRESHOLD_MM


def _stable(category: LungRads) -> LungRads:
    """v2022 at follow-up: a stable (or slowly growing) category 3 becomes 2, a stable 4A becomes 3."""
    if category == "3":
        return "2"
    if category == "4A":
        return "3"
    return category


def follow_up_category(nodule: NoduleMeasurement, prior: PriorNodule | None, *,
                       core_fraction: float = 0.5) -> LungRads:
    """Category at a follow-up exam: ``prior`` is the matched prior nodule, None when the nodule is new."""
    d = round_mm(nodule.mean_diameter_mm)
    comp = nodule.composition
    if comp == "calcified":
        return "1"
    if comp == "solid":
        if prior is None:  # new solid nodule
            if d < 4.0:
                return "2"
            if d < 6.0:
                return "3"
            if d < 8.0:
                return "4A"
            return "4B"
        if is_growing(d, prior):
            return "4A" if d < 8.0 else "4B"
        return _stable(_solid_baseline(d))
    if comp == "part_solid":
        solid = solid_component_mm(nodule, core_fraction)
        if prior is None and d < 6.0:
            return "3"
        growing = prior is None or is_growing(d, prior) or (
            prior.solid_component_mm is not None and solid - round_mm(prior.solid_component_mm) > GROWTH_THRESHOLD_MM)
        if growing:  # v2022: new or growing with solid component >= 4 mm -> 4B, < 4 mm -> 4A
            return "4B" if solid >= 4.0 else "4A"
        return _stable(_part_solid_baseline(d, solid))
    if comp == "ground_glass":
        if d >= 30.0 and (prior is None or is_growing(d, prior)):
            return "3"
        return "2"
    raise ValueError(f"composition: unknown nodule composition {comp!r}")


def apply_4x(category: LungRads, malignancy_probability: float, threshold: float) -> LungRads:
    """v2022 4X: a category 3 or 4 nodule with features that raise suspicion; ours is the model's probability."""
    if category in ("3", "4A", "4B") and malignancy_probability >= threshold:
        return "4X"
    return category


def nodule_category(nodule: NoduleMeasurement, *, prior: PriorNodule | None = None, has_prior_study: bool = False,
                    size_basis: SizeBasis = "diameter", core_fraction: float = 0.5,
                    four_x_probability: float = 0.9) -> LungRads:
    """Full per-nodule category: baseline or follow-up rules, then 4X."""
    if has_prior_study:
        category = follow_up_category(nodule, prior, core_fraction=core_fraction)
    else:
        category = baseline_category(nodule, size_basis=size_basis, core_fraction=core_fraction)
    return apply_4x(category, nodule.malignancy_probability, four_x_probability)


def exam_category(nodule_categories: list[LungRads], *, incomplete: bool = False) -> LungRads:
    """Exam category = the most severe nodule category; no nodules -> 1; an incomplete exam -> 0.

    An incomplete exam still reports an actionable (4A or higher) nodule: hiding it behind "0" would
    delay the work-up Lung-RADS asks for.
    """
    worst: LungRads = max(nodule_categories, key=_ORDER.__getitem__) if nodule_categories else "1"
    if incomplete and _ORDER[worst] < _ORDER["4A"]:
        return "0"
    return worst

