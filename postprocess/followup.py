"""Comparison with the patient's prior exam: LDCT nodules matched and measured for change (Lung-RADS
v2022 follow-up), mammography findings new since the prior and the prior's scores.

The prior is a ``PriorStudy`` (its TriageEvent, from the results store or read back from its SR in
the PACS). Two exams' patient coordinates are not one frame: the translation between them is the
difference of their lung-field centroids (``lung_centroid_mm`` of each event, ingest/lung_field.py),
refined on the matched nodules themselves (lungrads.match_priors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from pydicom import Dataset

from oncostream.contracts import MammoCategory, MammoFinding, NoduleFinding
from oncostream.study import PriorStudy
from postprocess import lungrads
from postprocess.lungrads import PriorNodule

MATCH_DISTANCE_MM = 10.0  # after alignment; nodules of one patient lie further apart (synthetic: > 4 mm + radii)
MAMMO_NEW_FRACTION = 0.1  # a finding is new when no prior finding of that view lies within this share of the image
_UNKNOWN_INTERVAL_DAYS = 365.0


def interval_days(current: date | None, prior: date | None) -> int | None:
    """Days from the prior study to this one; None when either date is unknown."""
    if current is None or prior is None:
        return None
    return (current - prior).days


@dataclass
class LdctComparison:
    """Current nodules (by index) matched to the prior event's nodules, and what changed."""

    prior_nodules: list[NoduleFinding]
    matches: list[PriorNodule | None]
    interval_days: float
    translation_mm: tuple[float, float, float]
    review_reasons: list[str] = field(default_factory=list)

    def change_of(self, index: int, diameter_mm: float, volume_mm3: float) -> dict:
        """NoduleFinding fields for current nodule ``index`` (measured as given): the prior's tracking
        UID carried over, diameter and volume change, volume doubling time, growth; none for a new one."""
        match = self.matches[index] if index < len(self.matches) else None
        if match is None or match.index is None:
            return {}
        before = self.prior_nodules[match.index]
        vdt = lungrads.volume_doubling_time_days(volume_mm3, before.volume_mm3, self.interval_days)
        change = {
            "tracking_uid": before.tracking_uid,
            "prior_tracking_uid": before.tracking_uid,
            "diameter_change_mm": lungrads.round_mm(diameter_mm - before.mean_diameter_mm),
            "volume_change_percent": (round(100.0 * (volume_mm3 - before.volume_mm3) / before.volume_mm3, 1)
                                      if before.volume_mm3 > 0 else None),
            "volume_doubling_time_days": round(vdt, 1) if vdt is not None else None,
            "growing": lungrads.is_growing(diameter_mm, match),
        }
        return change


def compare_ldct(current_centres_mm: Sequence[Sequence[float]], lung_centroid_mm: Sequence[float] | None,
                 prior: PriorStudy, interval: int | None) -> LdctComparison:
    """Match the current nodules (centres in this exam's patient coordinates) to the prior's."""
    reasons = []
    prior_nodules = [f for f in prior.event.findings if isinstance(f, NoduleFinding)]
    days = float(interval) if interval is not None and interval > 0 else _UNKNOWN_INTERVAL_DAYS
    if interval is None or interval <= 0:
        reasons.append("prior exam date unknown or not before this one: growth judged over 12 months")
    prior_centroid = prior.event.lung_centroid_mm
    if lung_centroid_mm is not None and prior_centroid is not None:
        translation = tuple(round(float(a) - float(b), 2) for a, b in zip(lung_centroid_mm, prior_centroid))
    else:
        translation = (0.0, 0.0, 0.0)
        if prior_nodules and current_centres_mm:
            reasons.append("lung fields not aligned (no lung-field centroid): nodules matched in raw patient "
                           "coordinates; check the comparison with the prior")
    matches = lungrads.match_priors([tuple(c) for c in current_centres_mm],
                                    [(f.center_mm, f.mean_diameter_mm) for f in prior_nodules], days,
                                    max_distance_mm=MATCH_DISTANCE_MM, translation_mm=translation, refine=True)
    return LdctComparison(prior_nodules, matches, days, translation, reasons)  # type: ignore[arg-type]


def compare_mammo(findings: list[MammoFinding], category: MammoCategory, datasets: Sequence[Dataset],
                  prior: PriorStudy) -> tuple[list[MammoFinding], MammoCategory]:
    """Flag each finding with no prior finding of the same laterality and view within a tenth of the
    image size (mammograms of two rounds are not registered: the breast is positioned anew), and put
    the prior exam's scores in the category."""
    size = {str(ds.SOPInstanceUID): max(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
            for ds in datasets}
    before = [f for f in prior.event.findings if isinstance(f, MammoFinding)]
    flagged = []
    for finding in findings:
        reach = MAMMO_NEW_FRACTION * (size.get(finding.sop_instance_uid) or 1000)
        seen = any(p.laterality == finding.laterality and p.view == finding.view
                   and math.dist(p.center_px, finding.center_px) <= reach for p in before)
        flagged.append(finding.model_copy(update={"new_since_prior": not seen}))
    prior_category = prior.event.category
    update = {"compared_with_prior": True}
    if isinstance(prior_category, MammoCategory):
        update |= {"prior_exam_score": prior_category.exam_score,
                   "prior_malignancy_probability": prior_category.malignancy_probability}
    return flagged, category.model_copy(update=update)
