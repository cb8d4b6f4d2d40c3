"""Every coded concept oncostream writes into DICOM (STYLE.md rule 3): one module, no inline literals.

Standard codes come from pydicom's copy of the DICOM PS3.16 code dictionaries (DCM, SCT, LN, UCUM),
so code values and meanings are the standard's own. Where no standard concept exists for what we
report (Lung-RADS category values, the oncostream exam score, part-solid composition) we
use the private coding scheme ``99ONCOSTREAM``: PS3.3 8.2 reserves the "99" prefix for exactly
that, and every object using it declares it in its Coding Scheme Identification Sequence
(:data:`LOCAL_SCHEME_ITEM`). https://dicom.nema.org/medical/dicom/current/output/chtml/part16/chapter_D.html
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

LOCAL_SCHEME = "99ONCOSTREAM"
LOCAL_SCHEME_ITEM = CodingSchemeIdentificationItem(
    designator=LOCAL_SCHEME, name="oncostream local codes", responsible_organization="oncostream project")


def _local(value: str, meaning: str) -> Code:
    return Code(value, LOCAL_SCHEME, meaning)


MANUFACTURER = "oncostream"

# --- shared --------------------------------------------------------------------------------
DEVICE_OBSERVER = codes.DCM.Device
IMAGING_MEASUREMENTS = codes.DCM.ImagingMeasurements  # TID 1500 row 6
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
ARTIFICIAL_INTELLIGENCE = codes.DCM.ArtificialIntelligence  # CID 7162 algorithm family
PROBABILITY_OF_CANCER = codes.DCM.ProbabilityOfCancer
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding
RENDERING_INTENT = codes.DCM.RenderingIntent
PRESENTATION_REQUIRED = codes.DCM.PresentationRequiredRenderingDeviceIsExpectedToPresent
SOURCE = Code("260753009", "SCT", "Source")  # concept name of IMAGE references, as highdicom names them
CENTER = codes.DCM.Center
OUTLINE = codes.DCM.Outline
ALGORITHM_NAME = codes.DCM.AlgorithmName
ALGORITHM_VERSION = codes.DCM.AlgorithmVersion

# --- units (UCUM) --------------------------------------------------------------------------
UNIT_MM = Code("mm", "UCUM", "millimeter")
UNIT_MM3 = codes.UCUM.CubicMillimeter
UNIT_PERCENT = codes.UCUM.Percent
UNIT_NO_UNITS = codes.UCUM.NoUnits

# --- LDCT: TID 1500 Measurement Report --------------------------------------------------------
PROCEDURE_CT = codes.cid100.CTUnspecifiedBodyRegion  # CID 100 has no chest-specific CT procedure
LUNG = codes.SCT.Lung
NODULE = codes.SCT.Nodule
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure
DIAMETER = codes.SCT.Diameter
LONG_AXIS = codes.SCT.LongAxis
VOLUME = codes.SCT.Volume
MEAN = codes.SCT.Mean
NODULE_COMPOSITION = codes.DCM.OpacityDescriptor
COMPOSITION_CODES: dict[str, Code] = {
    "solid": codes.DCM.SolidMass,
    "part_solid": _local("PARTSOLID", "Part-solid nodule"),
    "ground_glass": codes.DCM.GroundGlassOpacity,
    "calcified": codes.SCT.Calcified,
}
LUNG_RADS_ASSESSMENT = _local("LUNGRADS", "Lung-RADS v2022 assessment category")
LUNG_RADS_CODES: dict[str, Code] = {
    c: _local(f"LR{c}", f"Lung-RADS v2022 category {c}") for c in ("0", "1", "2", "3", "4A", "4B", "4X")
}
# follow-up: the comparison with the prior exam (TID 1500 exam-level evaluations, TID 1410 per nodule)
PRIOR_STUDY = _local("PRIORSTUDY", "Prior study compared")  # UIDREF: its StudyInstanceUID
DESCRIPTION_OF_CHANGE = codes.DCM.DescriptionOfChange
LUNG_FIELD_CENTROID = _local("LUNGCENTROID", "Lung field centroid")  # SCOORD3D POINT, aligns later rounds
DIAMETER_CHANGE = _local("DIAMCHANGE", "Change in mean diameter since prior")
VOLUME_CHANGE = _local("VOLCHANGE", "Change in volume since prior")
VOLUME_DOUBLING_TIME = _local("VDT", "Volume doubling time")
UNIT_DAY = codes.UCUM.Day
INTERVAL_CHANGE = _local("INTERVALCHANGE", "Interval change since prior")
INTERVAL_CHANGE_CODES: dict[str, Code] = {
    "new": _local("NEWNODULE", "New since prior"),
    "growing": _local("GROWING", "Growing (Lung-RADS v2022)"),
    "stable": _local("NOTGROWING", "Not growing (Lung-RADS v2022)"),
}
# a nodule the prior report did not list, found on the prior among its detections below the reporting
# threshold (look-back, postprocess/followup.py): the change above is measured against that detection
SEEN_ON_PRIOR = _local("SEENONPRIOR", "Seen on prior")
SEEN_IN_RETROSPECT = _local("RETROSPECT", "In retrospect, below the reporting threshold")

# --- mammography: TID 4000 Mammography CAD Document Root -------------------------------------
MAMMOGRAPHY_CAD_REPORT = codes.DCM.MammographyCADReport
IMAGE_LIBRARY = codes.DCM.ImageLibrary
IMAGE_LATERALITY = codes.DCM.ImageLaterality
IMAGE_VIEW = codes.DCM.ImageView
CAD_PROCESSING_AND_FINDINGS_SUMMARY = codes.DCM.CADProcessingAndFindingsSummary
ALL_SUCCEEDED_WITH_FINDINGS = codes.DCM.AllAlgorithmsSucceededWithFindings
ALL_SUCCEEDED_WITHOUT_FINDINGS = codes.DCM.AllAlgorithmsSucceededWithoutFindings
INDIVIDUAL_IMPRESSION_RECOMMENDATION = Code("111034", "DCM", "Individual Impression/Recommendation")
SINGLE_IMAGE_FINDING = Code("111059", "DCM", "Single Image Finding")
SUMMARY_OF_DETECTIONS = codes.DCM.SummaryOfDetections
SUMMARY_OF_ANALYSES = codes.DCM.SummaryOfAnalyses
SUCCEEDED = Code("111222", "DCM", "Succeeded")
NOT_ATTEMPTED = Code("111225", "DCM", "Not Attempted")
SUCCESSFUL_DETECTIONS = codes.DCM.SuccessfulDetections
DETECTION_PERFORMED = codes.DCM.DetectionPerformed
MAMMO_FINDING_CODES: dict[str, Code] = {  # CID 6014 Single Image Finding
    "mass": codes.SCT.MammographyBreastDensity,  # CID 6015: a CAD "density" is a mass-like finding
    "calcification": codes.SCT.CalcificationCluster,
    "region": Code("111099", "DCM", "Selected region"),
}
# TID 4013 Mammography CAD Selected Region: a "Selected region" finding must describe itself
SELECTED_REGION_DESCRIPTION = codes.DCM.SelectedRegionDescription
LATERALITY_CODES: dict[str, Code] = {"L": codes.SCT.LeftBreast, "R": codes.SCT.RightBreast}  # CID 6022
VIEW_CODES: dict[str, Code] = {  # CID 4014 View for Mammography
    "CC": codes.SCT.CranioCaudal,
    "MLO": codes.SCT.MedioLateralObliqueProjection,
}
BREAST_COMPOSITION = codes.SCT.BreastComposition
DENSITY_CODES: dict[str, Code] = {  # CID 6000 BI-RADS breast composition
    "a": codes.SCT.AlmostEntirelyFat,
    "b": codes.SCT.ScatteredFibroglandularDensities,
    "c": codes.SCT.HeterogeneouslyDense,
    "d": codes.SCT.ExtremelyDense,
}
IMPRESSION_DESCRIPTION = codes.DCM.ImpressionDescription  # TID 4002 row 5
RECOMMENDED_FOLLOW_UP = codes.DCM.RecommendedFollowUp  # TID 4002 row 6, CID 6028
FOLLOW_UP_RECALL = Code("386053000", "SCT", "Evaluation procedure")
FOLLOW_UP_ROUTINE = Code("111140", "DCM", "Normal interval follow-up")
LANGUAGE_EN_US = Code("en-US", "RFC5646", "English (United States)")  # TID 1204
EXAM_SCORE = _local("EXAMSCORE", "oncostream exam score (decile 1-10)")

# --- FHIR rendering of the triage event (postprocess/fhir.py) ----------------------------------------
IMAGING_MEASUREMENT_REPORT = codes.DCM.ImagingMeasurementReport  # TID 1500 document title
TRIAGE_PRIORITY = _local("TRIAGEPRIORITY", "oncostream triage priority (URGENT, HIGH, ROUTINE, LOW)")
