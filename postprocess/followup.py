"""Comparison with the patient's prior exam: LDCT nodules matched and measured for change (Lung-RADS
v2022 follow-up), mammography findings new since the prior and the prior's scores.

The prior is a ``PriorStudy`` (its TriageEvent, from the results store or read back from its SR in
the PACS). Two exams' patient coordinates are not one frame: the translation between them is the
difference of their lung-field centroids (``lung_centroid_mm`` of each event, ingest/lung_field.py),
refined on the matched nodules themselves (lungrads.match_priors).

A current nodule that no reported prior nodule matches is looked for, as a radiologist would, on the
prior at a lower operating point: among the prior read's look-back candidates (``PriorStudy.lookback_candidates``,
detections below the detector's operating point, from the results store; a prior read back from an SR
has none). Found there, it is not new: its change is measured against that detection, its growth called
by the v2022 rules, and a reader is asked to check it on the prior images. Its ``prior_tracking_uid``
stays null (the prior reported no such nodule): ``seen_in_retrospect`` tells such a finding from the event.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from pydicom import Dataset

from oncostream.contracts import MammoCategory, MammoFinding, NoduleFinding
from oncostream.study import LookbackCandidate, PriorStudy
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


def seen_in_retrospect(finding: NoduleFinding) -> bool:
    """Whether a follow-up finding was measured against a look-back candidate of the prior: its change is
    stated while no prior nodule is named (the prior read had not reported it)."""
    return finding.prior_tracking_uid is None and finding.diameter_change_mm is not None


@dataclass
class LdctComparison:
    """Current nodules (by index) matched to the prior event's nodules, or to the prior's look-back
    candidates (``PriorNodule.seen_in_retrospect``), and what changed."""

    prior_nodules: list[NoduleFinding]
    matches: list[PriorNodule | None]
    interval_days: float
    translation_mm: tuple[float, float, float]
    review_reasons: list[str] = field(default_factory=list)
    lookback: tuple[LookbackCandidate, ...] = ()

    def change_of(self, index: int, diameter_mm: float, volume_mm3: float) -> dict:
        """NoduleFinding fields for current nodule ``index`` (measured as given): the prior's tracking
        UID carried over, diameter and volume change, volume doubling time, growth; none for a new one.
        Measured against a look-back candidate, the change and growth are stated and no prior tracking UID."""
        match = self.matches[index] if index < len(self.matches) else None
        if match is None or match.index is None:
            return {}
        before = self.lookback[match.index] if match.seen_in_retrospect else self.prior_nodules[match.index]
        vdt = lungrads.volume_doubling_time_days(volume_mm3, before.volume_mm3, self.interval_days)
        change = {
            "diameter_change_mm": lungrads.round_mm(diameter_mm - before.mean_diameter_mm),
            "volume_change_percent": (round(100.0 * (volume_mm3 - before.volume_mm3) / before.volume_mm3, 1)
                                      if before.volume_mm3 > 0 else None),
            "volume_doubling_time_days": round(vdt, 1) if vdt is not None else None,
            "growing": lungrads.is_growing(diameter_mm, match),
        }
        if not match.seen_in_retrospect:
            change |= {"tracking_uid": before.tracking_uid, "prior_tracking_uid": before.tracking_uid}
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
    lookback = tuple(prior.lookback_candidates)
    matches = lungrads.match_priors([tuple(c) for c in current_centres_mm],
                                    [(f.center_mm, f.mean_diameter_mm) for f in prior_nodules], days,
                                    max_distance_mm=MATCH_DISTANCE_MM, translation_mm=translation, refine=True,
                                    lookback=[(c.center_mm, c.mean_diameter_mm) for c in lookback])
    for i, match in enumerate(matches):
        if match is not None and match.seen_in_retrospect:
            seen = lookback[match.index]
            reasons.append(f"nodule {i + 1} seen in retrospect on the prior exam, below the detector's reporting "
                           f"threshold (detection score {seen.detection_score:.2f}, {seen.mean_diameter_mm:.1f} mm "
                           "then): its change is measured against that detection; check it on the prior images")
    return LdctComparison(prior_nodules, matches, days, translation, reasons, lookback)  # type: ignore[arg-type]


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
