"""The one entry point the pipeline calls: inference -> TriageEvent + SR (+ SEG, heatmaps).

Every output identifier is derived from the input UIDs, the model releases, the program policy's
fingerprint and a role string (oncostream.uids), and every DICOM date/time from the input, so
replaying a study after a crash gives byte-identical objects: delivery is at-least-once, results
are idempotent.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from functools import partial

from oncostream.contracts import LungRadsCategory, MammoFinding, NoduleFinding, TriageEvent
from oncostream.settings import Settings
from oncostream.study import LdctInference, LookbackCandidate, MammoInference, PriorStudy, Study, StudyResult
from oncostream.uids import derive_uid, model_fingerprint
from postprocess import lungrads
from postprocess.heatmap import heatmap_images
from postprocess.followup import LdctComparison, compare_ldct, compare_mammo, interval_days
from postprocess.lungrads import NoduleMeasurement, PriorNodule
from postprocess.mammo_policy import exam_score_edges, mammo_category
from postprocess.priority import ProgramPolicy, ldct_priority, load_program, mammo_priority, needs_human_review
from postprocess.seg import nodule_segmentation
from postprocess.sr import ContentTimestamp, MammographyCadSR, lung_nodule_report


def _mm(value: float) -> float:
    return lungrads.round_mm(float(value))


def _p(value: float) -> float:
    return round(min(max(float(value), 0.0), 1.0), 4)


def _clip01(value: float) -> float:
    return min(max(float(value), 0.0), 1.0)


def inputs_fingerprint(study: Study) -> str:
    """Stable text for the set of instances a result was made from (any order)."""
    joined = "\x1f".join(sorted(str(ds.SOPInstanceUID) for ds in study.datasets))
    return hashlib.sha256(joined.encode()).hexdigest()[:32]


def output_uid(study: Study, model_versions: dict[str, str], policy: ProgramPolicy, role: str,
               prior_study_uid: str | None = None) -> str:
    """A derived UID for one output of ``study``; ``role`` says which (``sr``, ``seg-series``, ``nodule/3``...).
    Other models, another policy or another set of input instances (a view resent alone, long after its
    exam was published) give other UIDs: their outputs differ in content; so does a comparison with a
    prior exam (``prior_study_uid``; the same study compared with no prior, or another, reports other
    categories). A replay of the same instances against the same prior gives the same UIDs."""
    parts = [study.study_instance_uid, model_fingerprint(model_versions), policy.fingerprint,
             inputs_fingerprint(study), role]
    if prior_study_uid:
        parts += ["prior", prior_study_uid]
    return str(derive_uid(*parts))


def _patient_id(study: Study, settings: Settings) -> str | None:
    if not settings.allow_patient_identifiers or not study.datasets:
        return None
    return str(study.datasets[0].get("PatientID", "")) or None


def _ldct(study: Study, inference: LdctInference, policy: ProgramPolicy,
          priors: list[PriorNodule | None] | None, comparison: LdctComparison | None, uid
          ) -> tuple[list[NoduleFinding], LungRadsCategory, float, float]:
    findings: list[NoduleFinding] = []
    if comparison is not None:
        priors = comparison.matches
    for i, nodule in enumerate(inference.nodules):
        # the category is computed from exactly the rounded values the event and the SR carry
        diameter, volume = _mm(nodule.mean_diameter_mm), round(max(float(nodule.volume_mm3), 0.0), 1)
        probability = _p(nodule.malignancy_probability)
        measurement = NoduleMeasurement(
            mean_diameter_mm=diameter, composition=nodule.composition, volume_mm3=volume,
            solid_component_mm=nodule.solid_component_mm, malignancy_probability=probability)
        category = lungrads.nodule_category(
            measurement, prior=priors[i] if priors is not None and i < len(priors) else None,
            has_prior_study=priors is not None, size_basis=policy.ldct.size_basis,
            core_fraction=policy.ldct.part_solid_core_fraction,
            four_x_probability=policy.ldct.four_x_probability)
        findings.append(NoduleFinding(
            center_mm=tuple(round(float(c), 2) for c in nodule.center_mm),  # type: ignore[arg-type]
            mean_diameter_mm=diameter, long_axis_mm=_mm(nodule.long_axis_mm), volume_mm3=volume,
            composition=nodule.composition,  # type: ignore[arg-type]
            malignancy_probability=probability, lung_rads=category,
            **{"tracking_uid": uid(f"nodule/{i}"),
               **(comparison.change_of(i, diameter, volume) if comparison is not None else {})}))
    exam = lungrads.exam_category([f.lung_rads for f in findings], incomplete=study.incomplete)
    uncertainty = max((_clip01(n.uncertainty) for n in inference.nodules), default=0.0)
    return (findings, LungRadsCategory(lung_rads=exam, compared_with_prior=priors is not None),
            round(1.0 - uncertainty, 4), uncertainty)


def _lookback(inference: LdctInference) -> tuple[LookbackCandidate, ...]:
    """The look-back candidates rounded as findings are, so a later round compares with exactly what the
    results store keeps (they are never findings: no category, no priority, not in the event or SR)."""
    return tuple(LookbackCandidate(center_mm=tuple(round(float(c), 2) for c in candidate.center_mm),
                                   mean_diameter_mm=_mm(candidate.mean_diameter_mm),
                                   volume_mm3=round(max(float(candidate.volume_mm3), 0.0), 1),
                                   detection_score=_p(candidate.detection_score))
                 for candidate in inference.lookback)


def _mammo_findings(inference: MammoInference) -> list[MammoFinding]:
    findings = []
    for view in inference.views:
        for kind, center, bbox, score in view.regions:
            findings.append(MammoFinding(
                type=kind, laterality=view.laterality, view=view.view,  # type: ignore[arg-type]
                sop_instance_uid=view.sop_instance_uid,
                center_px=(int(center[0]), int(center[1])),
                bbox_px=(int(bbox[0]), int(bbox[1]), int(bbox[2]), int(bbox[3])), score=_p(score)))
    return findings


def build_result(study: Study, inference: LdctInference | MammoInference, settings: Settings,
                 now: datetime | None = None, *, priors: list[PriorNodule | None] | None = None,
                 prior: PriorStudy | None = None,
                 lung_centroid_mm: tuple[float, float, float] | None = None) -> StudyResult:
    """TriageEvent, SR, SEG and heatmaps for one study.

    ``prior`` is the patient's previous exam of the same modality (the newest one before this study):
    LDCT nodules are matched to its nodules after aligning the lung fields (``lung_centroid_mm`` of
    this series against the prior event's), then categorised by the Lung-RADS follow-up rules with
    their change, tracking UIDs carried over (a nodule it did not report, with its look-back candidates:
    postprocess/followup.py); mammography findings are compared with its findings and
    its scores reported next to these. ``priors`` (LDCT, without ``prior``) gives the matches by hand:
    one entry per current nodule, the matched prior nodule or None for a new one. ``now`` stamps
    ``triaged_at`` only; nothing in the DICOM outputs depends on the wall clock.
    """
    if not isinstance(inference, (LdctInference, MammoInference)):
        raise TypeError(f"inference: expected LdctInference or MammoInference, got {type(inference).__name__}")
    triaged_at = now or datetime.now(timezone.utc)
    policy = load_program(study.program or settings.program)
    versions = dict(inference.model_versions)
    when = ContentTimestamp.from_datasets(study.datasets, study.arrived_at)
    device_uid = str(derive_uid(model_fingerprint(versions), "device"))
    prior_uid = prior.study_instance_uid if prior is not None else None
    uid = partial(output_uid, study, versions, policy, prior_study_uid=prior_uid)
    sr_uid = uid("sr")
    sr_series_uid = uid("sr-series")
    segs = []
    secondary = []
    lookback: tuple[LookbackCandidate, ...] = ()
    reasons = list(inference.review_reasons)
    interval = interval_days(study.study_date, prior.study_date) if prior is not None else None
    if isinstance(inference, LdctInference):
        comparison = None
        if prior is not None:
            comparison = compare_ldct([n.center_mm for n in inference.nodules], lung_centroid_mm, prior, interval)
            reasons += comparison.review_reasons
        findings, category, confidence, uncertainty = _ldct(study, inference, policy, priors, comparison, uid)
        priority = ldct_priority(category.lung_rads, policy)
        modality = "CT"
        sr = lung_nodule_report(study.datasets, findings, category.lung_rads, versions, sop_instance_uid=sr_uid,
                                series_instance_uid=sr_series_uid, device_uid=device_uid, when=when,
                                prior=prior, interval_days=interval, lung_centroid_mm=lung_centroid_mm)
        seg = nodule_segmentation(study.datasets, inference.nodules, findings, versions,
                                  sop_instance_uid=uid("seg"),
                                  series_instance_uid=uid("seg-series"),
                                  device_uid=device_uid, when=when)
        if seg is not None:
            segs.append(seg)
        lookback = _lookback(inference)
    else:
        findings = _mammo_findings(inference)
        category = mammo_category(inference.exam_malignancy_probability, inference.density_probabilities,
                                  policy, exam_score_edges(policy, settings.model_repository))
        if prior is not None:
            findings, category = compare_mammo(findings, category, study.datasets, prior)
        priority = mammo_priority(category.exam_score, policy)
        modality = "MG"
        uncertainty = _clip01(inference.uncertainty)
        confidence = round(1.0 - uncertainty, 4)
        sr = MammographyCadSR(study.datasets, findings, category, versions, sop_instance_uid=sr_uid,
                              series_instance_uid=sr_series_uid, when=when, interval_days=interval)
        secondary = heatmap_images(study.datasets, inference.views, versions,
                                   series_instance_uid=uid("heatmap-series"),
                                   uid_for=lambda sop: uid(f"heatmap/{sop}"), when=when)

    event = TriageEvent(
        study_instance_uid=study.study_instance_uid, accession_number=study.accession_number,
        program=study.program or settings.program, modality=modality, priority=priority, category=category,
        findings=findings, confidence=confidence,
        needs_human_review=needs_human_review(confidence, uncertainty, study.incomplete, policy) or bool(reasons),
        review_reasons=reasons, incomplete=study.incomplete, missing=list(study.missing),
        series_instance_uid=study.series_instance_uid, skipped_series=list(study.skipped_series),
        model_versions=versions,
        sr_sop_instance_uid=str(sr.SOPInstanceUID), seg_sop_instance_uids=[str(s.SOPInstanceUID) for s in segs],
        arrived_at=study.arrived_at, triaged_at=triaged_at, patient_id=_patient_id(study, settings),
        prior_study_instance_uid=prior_uid, prior_interval_days=interval,
        lung_centroid_mm=lung_centroid_mm if modality == "CT" else None)
    return StudyResult(study=study, event=event, sr=sr, segs=segs, secondary=secondary,
                       lookback_candidates=lookback)
