"""DICOM Structured Reports: LDCT TID 1500 Measurement Report and the Mammography CAD SR (TID 4000).

PS3.16 TID 1500: https://dicom.nema.org/medical/dicom/current/output/chtml/part16/chapter_A.html#sect_TID_1500
PS3.16 TID 4000: https://dicom.nema.org/medical/dicom/current/output/chtml/part16/sect_TID_4000.html

highdicom models TID 1500 completely, so the LDCT report is a ``highdicom.sr.Comprehensive3DSR``.
It has no Mammography CAD SR class; that one is built from highdicom content items on highdicom's SR
document base, so both share one IOD writer. Every value written is also what the TriageEvent
carries (rounded the same way), which is what lets tests read the SR back and compare exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    GraphicTypeValues3D,
    ImageContentItem,
    ImageRegion3D,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    Scoord3DContentItem,
    ScoordContentItem,
    TextContentItem,
    TrackingIdentifier,
    UIDRefContentItem,
)
from highdicom.sr.sop import _SR
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID

from oncostream.contracts import LungRads, MammoCategory, MammoFinding, NoduleFinding
from oncostream.study import PriorStudy, mammo_view
from oncostream.uids import derive_uid
from postprocess import codes
from postprocess.followup import seen_in_retrospect

MAMMOGRAPHY_CAD_SR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.50")
SERIES_NUMBER_SR = 9001  # a fixed, high series number keeps derived objects after the source series

_CONTAINS = RelationshipTypeValues.CONTAINS
_PROPERTIES = RelationshipTypeValues.HAS_PROPERTIES
_CONCEPT_MOD = RelationshipTypeValues.HAS_CONCEPT_MOD
_INFERRED = RelationshipTypeValues.INFERRED_FROM
_ACQ_CONTEXT = RelationshipTypeValues.HAS_ACQ_CONTEXT
_SELECTED = RelationshipTypeValues.SELECTED_FROM


@dataclass(frozen=True)
class ContentTimestamp:
    """ContentDate/ContentTime (and InstanceCreation*) taken from the input, so a replay writes the same bytes."""

    date: str  # DA
    time: str  # TM

    @classmethod
    def from_datasets(cls, datasets: Sequence[Dataset], fallback: datetime) -> "ContentTimestamp":
        """The latest ContentDate/Time (else StudyDate/Time) of the inputs; ``fallback`` only if they have none."""
        stamps = []
        for ds in datasets:
            date = str(ds.get("ContentDate", "") or ds.get("StudyDate", "") or "")
            time = str(ds.get("ContentTime", "") or ds.get("StudyTime", "") or "")
            if date:
                stamps.append((date, time.split(".")[0].ljust(6, "0")))  # TM may omit minutes/seconds
        if stamps:
            date, time = max(stamps)
            return cls(date, time)
        return cls(fallback.strftime("%Y%m%d"), fallback.strftime("%H%M%S"))


def stamp(ds: Dataset, when: ContentTimestamp) -> None:
    """Replace every wall-clock value and random UID highdicom writes, for byte-identical replays.

    highdicom stamps InstanceCreation/Content/Series dates, ContributionDateTime, the Secondary Capture
    date/time and (SEG) a random DimensionOrganizationUID; all become functions of the input.
    """
    for prefix in ("Content", "InstanceCreation", "Series"):
        setattr(ds, f"{prefix}Date", when.date)
        setattr(ds, f"{prefix}Time", when.time)
    if "DateOfSecondaryCapture" in ds or "TimeOfSecondaryCapture" in ds:
        ds.DateOfSecondaryCapture = when.date
        ds.TimeOfSecondaryCapture = when.time
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = when.date + when.time
    if "DimensionOrganizationSequence" in ds:
        uid = derive_uid(str(ds.SOPInstanceUID), "dimension-organization")
        for item in ds.DimensionOrganizationSequence:
            item.DimensionOrganizationUID = uid
        for item in ds.get("DimensionIndexSequence", []):
            item.DimensionOrganizationUID = uid


def _device_observer(device_uid: str, model_versions: dict[str, str]) -> ObservationContext:
    return ObservationContext(observer_device_context=ObserverContext(
        observer_type=codes.DEVICE_OBSERVER,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid, name="oncostream", manufacturer_name=codes.MANUFACTURER,
            model_name=",".join(sorted(model_versions))[:64])))


def _algorithm(model_versions: dict[str, str], primary: str) -> AlgorithmIdentification:
    """TID 4019 for the model that produced the findings; every model version as a parameter."""
    name = primary if primary in model_versions else sorted(model_versions)[0]
    return AlgorithmIdentification(
        name=name, version=model_versions[name], manufacturer=codes.MANUFACTURER,
        parameters=[f"{k}={v}" for k, v in sorted(model_versions.items())])


# ---------------------------------------------------------------------------------------------
# LDCT: TID 1500 Measurement Report in a Comprehensive 3D SR
# ---------------------------------------------------------------------------------------------

def _axial_circle(center: tuple[float, float, float], diameter: float) -> np.ndarray:
    """A planar ELLIPSE (here a circle) in the axial plane: major-axis end points, then minor-axis end points."""
    x, y, z = center
    r = max(diameter, 0.1) / 2.0
    return np.array([[x - r, y, z], [x + r, y, z], [x, y - r, z], [x, y + r, z]], dtype=np.float64)


def _change_items(finding: NoduleFinding, compared: bool) -> tuple[list[Measurement], list[QualitativeEvaluation]]:
    """At a follow-up exam: the nodule's change since the prior (TID 1410 measurements and evaluations);
    for a nodule seen in retrospect on the prior, also that it was."""
    if not compared:
        return [], []
    retrospect = seen_in_retrospect(finding)
    if finding.prior_tracking_uid is None and not retrospect:
        return [], [QualitativeEvaluation(name=codes.INTERVAL_CHANGE, value=codes.INTERVAL_CHANGE_CODES["new"])]
    measurements = []
    if finding.diameter_change_mm is not None:
        measurements.append(Measurement(name=codes.DIAMETER_CHANGE, value=finding.diameter_change_mm,
                                        unit=codes.UNIT_MM))
    if finding.volume_change_percent is not None:
        measurements.append(Measurement(name=codes.VOLUME_CHANGE, value=finding.volume_change_percent,
                                        unit=codes.UNIT_PERCENT))
    if finding.volume_doubling_time_days is not None:
        measurements.append(Measurement(name=codes.VOLUME_DOUBLING_TIME, value=finding.volume_doubling_time_days,
                                        unit=codes.UNIT_DAY))
    state = "growing" if finding.growing else "stable"
    evaluations = [QualitativeEvaluation(name=codes.INTERVAL_CHANGE, value=codes.INTERVAL_CHANGE_CODES[state])]
    if retrospect:
        evaluations.append(QualitativeEvaluation(name=codes.SEEN_ON_PRIOR, value=codes.SEEN_IN_RETROSPECT))
    return measurements, evaluations


def _nodule_group(index: int, finding: NoduleFinding, frame_of_reference_uid: str,
                  algorithm: AlgorithmIdentification,
                  compared: bool = False) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for one nodule: location as a SCOORD3D circle (long axis) centred on the nodule centre;
    at a follow-up (``compared``) also its change since the prior. A nodule seen before keeps the
    prior report's tracking UID (TID 4108), which is what links the two reports' groups."""
    region = ImageRegion3D(graphic_type=GraphicTypeValues3D.ELLIPSE,
                           graphic_data=_axial_circle(finding.center_mm, finding.long_axis_mm),
                           frame_of_reference_uid=frame_of_reference_uid)
    measurements = [
        Measurement(name=codes.LONG_AXIS, value=finding.long_axis_mm, unit=codes.UNIT_MM),
        Measurement(name=codes.DIAMETER, value=finding.mean_diameter_mm, unit=codes.UNIT_MM, derivation=codes.MEAN),
        Measurement(name=codes.VOLUME, value=finding.volume_mm3, unit=codes.UNIT_MM3),
        Measurement(name=codes.PROBABILITY_OF_CANCER, value=finding.malignancy_probability, unit=codes.UNIT_NO_UNITS),
    ]
    evaluations = [
        QualitativeEvaluation(name=codes.NODULE_COMPOSITION, value=codes.COMPOSITION_CODES[finding.composition]),
        QualitativeEvaluation(name=codes.LUNG_RADS_ASSESSMENT, value=codes.LUNG_RADS_CODES[finding.lung_rads]),
    ]
    changes, change_evaluations = _change_items(finding, compared)
    measurements += changes
    evaluations += change_evaluations
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=finding.tracking_uid, identifier=f"Nodule {index + 1}"),
        referenced_region=region,
        finding_type=codes.NODULE,
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_sites=[FindingSite(anatomic_location=codes.LUNG)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def lung_nodule_report(  # TID 1500
    datasets: Sequence[Dataset], findings: Sequence[NoduleFinding], exam_category: LungRads,
    model_versions: dict[str, str], *, sop_instance_uid: str, series_instance_uid: str, device_uid: str,
    when: ContentTimestamp, prior: PriorStudy | None = None, interval_days: int | None = None,
    lung_centroid_mm: Sequence[float] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """LDCT Measurement Report (TID 1500): one TID 1410 group per nodule, the exam Lung-RADS category.

    References exactly ``datasets`` (the series the findings come from) as evidence. With a ``prior``
    the exam-level evaluations name the prior study compared and summarise the change, and each nodule
    states its own; ``lung_centroid_mm`` (a SCOORD3D point) is what a later round aligns to.
    """
    if not datasets:
        raise ValueError("datasets: an SR needs the instances it reports on")
    frame_of_reference_uid = str(datasets[0].FrameOfReferenceUID)
    algorithm = _algorithm(model_versions, "ldct_nodule_segmenter")
    groups = [_nodule_group(i, f, frame_of_reference_uid, algorithm, compared=prior is not None)
              for i, f in enumerate(findings)]
    # highdicom insists on one measurement group; TID 1500 only needs one of rows 6/10/12, so a
    # report without nodules is built around a placeholder whose Imaging Measurements container is
    # then dropped, leaving the exam-level Qualitative Evaluations (Lung-RADS 1).
    placeholder = [MeasurementsAndQualitativeEvaluations(tracking_identifier=TrackingIdentifier(identifier="none"))]
    report = MeasurementReport(
        observation_context=_device_observer(device_uid, model_versions),
        procedure_reported=codes.PROCEDURE_CT,
        imaging_measurements=groups or placeholder,
    )
    if not groups:
        report[0].ContentSequence = ContentSequence(
            [item for item in report[0].ContentSequence
             if item.ConceptNameCodeSequence[0].CodeValue != codes.IMAGING_MEASUREMENTS.value])
    # TID 1500 row 12: exam-level Qualitative Evaluations container
    exam = ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS,
                                relationship_type=_CONTAINS)
    exam_items = [CodeContentItem(
        name=codes.LUNG_RADS_ASSESSMENT, value=codes.LUNG_RADS_CODES[exam_category], relationship_type=_CONTAINS)]
    if prior is not None:
        exam_items += [
            UIDRefContentItem(name=codes.PRIOR_STUDY, value=prior.study_instance_uid, relationship_type=_CONTAINS),
            TextContentItem(name=codes.DESCRIPTION_OF_CHANGE, value=_change_summary(findings, prior, interval_days),
                            relationship_type=_CONTAINS)]
    if lung_centroid_mm is not None:
        exam_items.append(Scoord3DContentItem(
            name=codes.LUNG_FIELD_CENTROID, graphic_type=GraphicTypeValues3D.POINT,
            graphic_data=np.array([[float(v) for v in lung_centroid_mm]]),
            frame_of_reference_uid=frame_of_reference_uid, relationship_type=_CONTAINS))
    exam.ContentSequence = ContentSequence(exam_items)
    report[0].ContentSequence.append(exam)
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(datasets), content=report[0], series_instance_uid=series_instance_uid,
        series_number=SERIES_NUMBER_SR, sop_instance_uid=sop_instance_uid, instance_number=1,
        manufacturer=codes.MANUFACTURER, is_complete=True, series_description="oncostream LDCT measurements",
        content_date=when.date, content_time=when.time, series_date=when.date, series_time=when.time,
    )
    sr.CodingSchemeIdentificationSequence = [codes.LOCAL_SCHEME_ITEM]
    stamp(sr, when)
    return sr


def _change_summary(findings: Sequence[NoduleFinding], prior: PriorStudy, interval_days: int | None) -> str:
    """One readable sentence: which prior, how long ago, what changed (Lung-RADS v2022 follow-up rules)."""
    when = prior.study_date.isoformat() if prior.study_date else "date unknown"
    days = f", {interval_days} days earlier" if interval_days is not None else ""
    parts = []
    for i, f in enumerate(findings):
        retrospect = seen_in_retrospect(f)
        if f.prior_tracking_uid is None and not retrospect:
            parts.append(f"nodule {i + 1} new")
        else:
            vdt = f", VDT {f.volume_doubling_time_days:.0f} d" if f.volume_doubling_time_days else ""
            state = "growing" if f.growing else "not growing"
            seen = ", seen in retrospect on the prior below the reporting threshold" if retrospect else ""
            parts.append(f"nodule {i + 1} {state} ({f.diameter_change_mm:+.1f} mm{vdt}{seen})")
    seen = {f.prior_tracking_uid for f in findings if f.prior_tracking_uid}
    resolved = sum(1 for f in prior.event.findings
                   if isinstance(f, NoduleFinding) and f.tracking_uid not in seen)
    if resolved:
        parts.append(f"{resolved} prior nodule(s) not seen")
    text = (f"compared with prior study of {when}{days}; Lung-RADS v2022 follow-up rules; "
            + ("; ".join(parts) if parts else "no nodules then or now"))
    return text[:1024]


# ---------------------------------------------------------------------------------------------
# Mammography CAD SR: TID 4000 Mammography CAD Document Root
# ---------------------------------------------------------------------------------------------

def _node(item: Dataset, children: Sequence[Dataset]) -> Dataset:
    if children:
        item.ContentSequence = ContentSequence(list(children))
    return item


def _rendering_intent() -> CodeContentItem:
    return CodeContentItem(name=codes.RENDERING_INTENT, value=codes.PRESENTATION_REQUIRED,
                           relationship_type=_CONCEPT_MOD)


def _algorithm_items(name: str, version: str) -> list[Dataset]:  # TID 4019
    return [
        TextContentItem(name=codes.ALGORITHM_NAME, value=name, relationship_type=_PROPERTIES),
        TextContentItem(name=codes.ALGORITHM_VERSION, value=version, relationship_type=_PROPERTIES),
    ]


def _library_entry(ds: Dataset) -> ImageContentItem:  # TID 4020
    item = ImageContentItem(name=codes.SOURCE, referenced_sop_class_uid=ds.SOPClassUID,
                            referenced_sop_instance_uid=ds.SOPInstanceUID, relationship_type=_CONTAINS)
    laterality, view = mammo_view(ds)
    children: list[Dataset] = []
    if laterality in codes.LATERALITY_CODES:
        children.append(CodeContentItem(name=codes.IMAGE_LATERALITY, value=codes.LATERALITY_CODES[laterality],
                                        relationship_type=_ACQ_CONTEXT))
    if view in codes.VIEW_CODES:
        children.append(CodeContentItem(name=codes.IMAGE_VIEW, value=codes.VIEW_CODES[view],
                                        relationship_type=_ACQ_CONTEXT))
    return _node(item, children)


def _scoord_on(name: Code, graphic_type: GraphicTypeValues, points_xy: np.ndarray, ds: Dataset) -> ScoordContentItem:
    """SCOORD on one view (TID 4021); graphic data is (column, row) in image coordinates (PS3.3 C.10.5.1.2)."""
    item = ScoordContentItem(name=name, graphic_type=graphic_type, graphic_data=np.asarray(points_xy, np.float64),
                             relationship_type=_PROPERTIES)
    ref = ImageContentItem(name=codes.SOURCE, referenced_sop_class_uid=ds.SOPClassUID,
                           referenced_sop_instance_uid=ds.SOPInstanceUID, relationship_type=_SELECTED)
    return _node(item, [ref])


# what a "region" finding (ingest/mammo.py heatmap_regions) is, for the reader of the report
REGION_DESCRIPTION = ("area where the malignancy classifier's heatmap exceeds its region threshold "
                      "(explains the view score; not a lesion outline)")


def _single_image_finding(finding: MammoFinding, ds: Dataset, algorithm: tuple[str, str]) -> Dataset:  # TID 4006
    # image coordinates put (0, 0) at the top-left corner of the first pixel: the centre of pixel
    # (row, col) is (col + 0.5, row + 0.5), and an end-exclusive box [r0, r1) x [c0, c1) has its
    # edges at exactly r0, r1, c0, c1
    row, col = finding.center_px
    r0, c0, r1, c1 = finding.bbox_px
    centre = np.array([[col + 0.5, row + 0.5]])
    outline = np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=np.float64)
    item = CodeContentItem(name=codes.SINGLE_IMAGE_FINDING, value=codes.MAMMO_FINDING_CODES[finding.type],
                           relationship_type=_CONTAINS)
    children = [
        _rendering_intent(),
        *_algorithm_items(*algorithm),
        NumContentItem(name=codes.CERTAINTY_OF_FINDING, value=round(finding.score * 100.0, 4),
                       unit=codes.UNIT_PERCENT, relationship_type=_PROPERTIES),
        _scoord_on(codes.CENTER, GraphicTypeValues.POINT, centre, ds),
        _scoord_on(codes.OUTLINE, GraphicTypeValues.POLYLINE, outline, ds),
    ]
    if finding.type == "region":  # TID 4013 row 1 (M)
        children.insert(0, TextContentItem(name=codes.SELECTED_REGION_DESCRIPTION, value=REGION_DESCRIPTION,
                                           relationship_type=_PROPERTIES))
    return _node(item, children)


def _individual_impression(children: Sequence[Dataset]) -> Dataset:  # TID 4003
    container = ContainerContentItem(name=codes.INDIVIDUAL_IMPRESSION_RECOMMENDATION,
                                     relationship_type=_INFERRED, is_content_continuous=False)
    return _node(container, [_rendering_intent(), *children])


def _prior_comparison(category: MammoCategory, findings: Sequence[MammoFinding], interval_days: int | None) -> str:
    if not category.compared_with_prior:
        return ""
    days = f" ({interval_days} days earlier)" if interval_days is not None else ""
    prior = f"exam score {category.prior_exam_score} then" if category.prior_exam_score is not None else ""
    new = sum(1 for f in findings if f.new_since_prior)
    return (f"; compared with the prior exam{days}: {prior}{', ' if prior else ''}{category.exam_score} now, "
            f"{new} finding(s) new since the prior")


def _exam_impression(category: MammoCategory, findings: Sequence[MammoFinding] = (),
                     interval_days: int | None = None) -> list[Dataset]:  # TID 4002, under the findings summary
    """Exam-level results: a readable impression, the recall as a recommended follow-up, score and probability;
    at a comparison with a prior exam, the prior's score and how many findings are new since it."""
    recall = "recall suggested" if category.recall else "no recall suggested"
    text = (f"oncostream exam score {category.exam_score} of 10 (decile of the exam malignancy probability over "
            f"the reference population); BI-RADS breast composition {category.density}; {recall}"
            + _prior_comparison(category, findings, interval_days))
    return [
        TextContentItem(name=codes.IMPRESSION_DESCRIPTION, value=text, relationship_type=_PROPERTIES),
        CodeContentItem(name=codes.RECOMMENDED_FOLLOW_UP,
                        value=codes.FOLLOW_UP_RECALL if category.recall else codes.FOLLOW_UP_ROUTINE,
                        relationship_type=_PROPERTIES),
        NumContentItem(name=codes.EXAM_SCORE, value=category.exam_score, unit=codes.UNIT_NO_UNITS,
                       relationship_type=_PROPERTIES),
        NumContentItem(name=codes.PROBABILITY_OF_CANCER, value=round(category.malignancy_probability * 100.0, 4),
                       unit=codes.UNIT_PERCENT, relationship_type=_PROPERTIES),
    ]


def _breast_composition(category: MammoCategory, algorithm: tuple[str, str]) -> Dataset:  # TID 4006 + TID 4007
    finding = CodeContentItem(name=codes.SINGLE_IMAGE_FINDING, value=codes.BREAST_COMPOSITION,
                              relationship_type=_CONTAINS)
    return _individual_impression([_node(finding, [
        _rendering_intent(),
        *_algorithm_items(*algorithm),
        CodeContentItem(name=codes.BREAST_COMPOSITION, value=codes.DENSITY_CODES[category.density],
                        relationship_type=_PROPERTIES),
    ])])


class MammographyCadSR(_SR):  # TID 4000
    """Mammography CAD SR (PS3.3 A.35.5) with a TID 4000 document tree; references exactly the given views."""

    def __init__(self, datasets: Sequence[Dataset], findings: Sequence[MammoFinding], category: MammoCategory,
                 model_versions: dict[str, str], *, sop_instance_uid: str, series_instance_uid: str,
                 when: ContentTimestamp, interval_days: int | None = None):
        if not datasets:
            raise ValueError("datasets: a Mammography CAD SR needs the views it reports on")
        by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
        unknown = [f.sop_instance_uid for f in findings if f.sop_instance_uid not in by_uid]
        if unknown:
            raise ValueError(f"findings: reference instances outside the study: {unknown}")
        if not model_versions:
            raise ValueError("model_versions: TID 4019 needs at least one algorithm")
        name = "mammo_classifier" if "mammo_classifier" in model_versions else sorted(model_versions)[0]
        algorithm = (name, model_versions[name])

        root = ContainerContentItem(name=codes.MAMMOGRAPHY_CAD_REPORT, is_content_continuous=False,
                                    template_id="4000")
        language = hd.sr.LanguageOfContentItemAndDescendants(language=codes.LANGUAGE_EN_US)  # TID 1204
        library = _node(ContainerContentItem(name=codes.IMAGE_LIBRARY, relationship_type=_CONTAINS),
                        [_library_entry(ds) for ds in datasets])
        summary_value = codes.ALL_SUCCEEDED_WITH_FINDINGS if findings else codes.ALL_SUCCEEDED_WITHOUT_FINDINGS
        impressions = [_individual_impression([_single_image_finding(f, by_uid[f.sop_instance_uid], algorithm)])
                       for f in findings]
        summary = _node(CodeContentItem(name=codes.CAD_PROCESSING_AND_FINDINGS_SUMMARY, value=summary_value,
                                        relationship_type=_CONTAINS),
                        [*_algorithm_items(*algorithm), *_exam_impression(category, findings, interval_days),
                         *impressions,
                         _breast_composition(category, algorithm)])
        detection_types = sorted({f.type for f in findings} | {"mass", "calcification"})
        detections = _node(CodeContentItem(name=codes.SUMMARY_OF_DETECTIONS, value=codes.SUCCEEDED,
                                           relationship_type=_CONTAINS), [
            _node(ContainerContentItem(name=codes.SUCCESSFUL_DETECTIONS, relationship_type=_INFERRED), [
                _node(CodeContentItem(name=codes.DETECTION_PERFORMED, value=codes.MAMMO_FINDING_CODES[t],
                                      relationship_type=_CONTAINS),
                      [*_algorithm_items(*algorithm),
                       *[ImageContentItem(name=codes.SOURCE, referenced_sop_class_uid=ds.SOPClassUID,
                                          referenced_sop_instance_uid=ds.SOPInstanceUID,
                                          relationship_type=_PROPERTIES) for ds in datasets]])
                for t in detection_types if t != "region"])])
        analyses = CodeContentItem(name=codes.SUMMARY_OF_ANALYSES, value=codes.NOT_ATTEMPTED,
                                   relationship_type=_CONTAINS)
        _node(root, [*language, library, summary, detections, analyses])
        super().__init__(
            evidence=list(datasets), content=root, series_instance_uid=series_instance_uid,
            series_number=SERIES_NUMBER_SR, sop_instance_uid=sop_instance_uid,
            sop_class_uid=MAMMOGRAPHY_CAD_SR_STORAGE, instance_number=1, manufacturer=codes.MANUFACTURER,
            is_complete=True, series_description="oncostream mammography CAD",
            content_date=when.date, content_time=when.time, series_date=when.date, series_time=when.time,
        )
        self.CodingSchemeIdentificationSequence = [codes.LOCAL_SCHEME_ITEM]
        stamp(self, when)
