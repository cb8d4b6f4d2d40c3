"""SR outputs: LDCT TID 1500 and Mammography CAD SR (TID 4000), plus the mammography heatmap images.

Each must pass dicom3tools' dciodvfy with no errors, render in DCMTK's dsrdump, be read back by
highdicom with the values the TriageEvent carries, reference exactly its study's instances, and be
byte-identical when the same study is processed again.
"""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from oncostream.settings import Settings
from postprocess import codes
from postprocess.results import build_result
from postprocess.sr import MAMMOGRAPHY_CAD_SR_STORAGE, REGION_DESCRIPTION
from tests.dicom_tools import dciodvfy_errors, dsrdump_ok, dsrdump_text, sr_validator_available, sr_validator_errors
from tests.unit import screening_cases as cases

SETTINGS = Settings()


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _evidence_uids(sr: Dataset) -> list[str]:
    return [str(instance.ReferencedSOPInstanceUID)
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for instance in series.ReferencedSOPSequence]


def _code(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptCodeSequence[0]
    return str(concept.CodeValue), str(concept.CodingSchemeDesignator)


def _as_tuple(code) -> tuple[str, str]:
    return code.value, code.scheme_designator


# --- LDCT: TID 1500 -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ldct(tmp_path_factory):
    study = cases.ldct_study()
    result = build_result(study, cases.ldct_inference(), SETTINGS, now=cases.NOW)
    path = _save(result.sr, tmp_path_factory.mktemp("ldct") / "sr.dcm")
    return study, result, path


def test_ldct_sr_passes_dciodvfy(ldct) -> None:
    assert dciodvfy_errors(ldct[2]) == []


def test_ldct_sr_renders_in_dsrdump(ldct) -> None:
    assert dsrdump_ok(ldct[2])
    text = dsrdump_text(ldct[2])
    assert "Imaging Measurement Report" in text and "Tracking Unique Identifier" in text


def test_ldct_sr_is_a_comprehensive_3d_tid_1500_report(ldct) -> None:
    sr = pydicom.dcmread(ldct[2])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert str(sr.SOPInstanceUID) == ldct[1].event.sr_sop_instance_uid


def test_ldct_sr_references_exactly_the_study_instances(ldct) -> None:
    study, _, path = ldct
    uids = _evidence_uids(pydicom.dcmread(path))
    assert sorted(uids) == sorted(str(ds.SOPInstanceUID) for ds in study.datasets)


def test_highdicom_reads_back_every_nodule_with_the_event_values(ldct) -> None:
    _, result, path = ldct
    report = hd.sr.srread(path)
    groups = report.content.get_planar_roi_measurement_groups()
    findings = result.event.findings
    assert len(groups) == len(findings) == 2
    for group, finding in zip(groups, findings):
        assert str(group.tracking_uid) == finding.tracking_uid

        def value(name):
            (measurement,) = group.get_measurements(name=name)
            return measurement.value

        assert value(codes.LONG_AXIS) == pytest.approx(finding.long_axis_mm, abs=1e-9)
        assert value(codes.DIAMETER) == pytest.approx(finding.mean_diameter_mm, abs=1e-9)
        assert value(codes.VOLUME) == pytest.approx(finding.volume_mm3, abs=1e-9)
        assert value(codes.PROBABILITY_OF_CANCER) == pytest.approx(finding.malignancy_probability, abs=1e-9)
        (composition,) = group.get_qualitative_evaluations(name=codes.NODULE_COMPOSITION)
        assert _as_tuple(composition.value) == _as_tuple(codes.COMPOSITION_CODES[finding.composition])
        (category,) = group.get_qualitative_evaluations(name=codes.LUNG_RADS_ASSESSMENT)
        assert _as_tuple(category.value) == _as_tuple(codes.LUNG_RADS_CODES[finding.lung_rads])
        region = group.roi
        assert region.frame_of_reference_uid == result.study.datasets[0].FrameOfReferenceUID
        centre = region.value.reshape(-1, 3)[:2].mean(axis=0)  # midpoint of the circle's axis
        assert centre == pytest.approx(np.array(finding.center_mm), abs=1e-3)


def test_ldct_sr_names_the_models_tid_4019(ldct) -> None:
    text = dsrdump_text(ldct[2])
    assert '"Algorithm Name")="ldct_nodule_segmenter"' in text
    for name, version in cases.LDCT_VERSIONS.items():
        assert f'="{name}={version}"' in text


def test_ldct_exam_category_is_in_the_sr(ldct) -> None:
    sr = pydicom.dcmread(ldct[2])
    (container,) = [item for item in sr.ContentSequence
                    if item.ValueType == "CONTAINER"
                    and item.ConceptNameCodeSequence[0].CodeValue == codes.QUALITATIVE_EVALUATIONS.value]
    assert _code(container.ContentSequence[0]) == _as_tuple(codes.LUNG_RADS_CODES[ldct[1].event.category.lung_rads])


def test_ldct_policy_result(ldct) -> None:
    event = ldct[1].event
    # truth: 11 mm solid, probability 0.9 -> 4A -> 4X (>= 0.85); 9 mm ground glass -> 2
    assert [f.lung_rads for f in event.findings] == ["4X", "2"]
    assert (event.category.lung_rads, event.priority) == ("4X", "URGENT")


def test_ldct_replay_is_byte_identical() -> None:
    study = cases.ldct_study()
    first = build_result(study, cases.ldct_inference(), SETTINGS, now=cases.NOW)
    again = build_result(cases.ldct_study(), cases.ldct_inference(), SETTINGS)
    assert _bytes(first.sr) == _bytes(again.sr)
    assert [f.tracking_uid for f in first.event.findings] == [f.tracking_uid for f in again.event.findings]


def test_new_model_version_gives_new_identifiers() -> None:
    study = cases.ldct_study()
    inference = cases.ldct_inference()
    inference.model_versions["ldct_nodule_detector"] = "2.0.0"
    old = build_result(study, cases.ldct_inference(), SETTINGS, now=cases.NOW)
    new = build_result(study, inference, SETTINGS, now=cases.NOW)
    assert old.event.sr_sop_instance_uid != new.event.sr_sop_instance_uid
    assert old.event.findings[0].tracking_uid != new.event.findings[0].tracking_uid


def test_ldct_without_nodules_still_reports(tmp_path: Path) -> None:
    result = build_result(cases.ldct_study(), cases.ldct_inference(nodules=False), SETTINGS, now=cases.NOW)
    path = _save(result.sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    assert dsrdump_ok(path)
    assert result.event.category.lung_rads == "1" and result.event.findings == []
    assert result.segs == [] and result.event.seg_sop_instance_uids == []


# --- mammography: TID 4000 -------------------------------------------------------------------

def _walk(items, parents=()):
    for item in items:
        yield item, parents
        yield from _walk(item.get("ContentSequence", []), (*parents, item))


def _named(sr: Dataset, code) -> list[tuple[Dataset, tuple]]:
    return [(item, parents) for item, parents in _walk(sr.ContentSequence)
            if "ConceptNameCodeSequence" in item and item.ConceptNameCodeSequence[0].CodeValue == code.value
            and item.ConceptNameCodeSequence[0].CodingSchemeDesignator == code.scheme_designator]


@pytest.fixture(scope="module")
def mammo(tmp_path_factory):
    study = cases.mammo_study()
    result = build_result(study, cases.mammo_inference(study), SETTINGS, now=cases.NOW)
    folder = tmp_path_factory.mktemp("mammo")
    path = _save(result.sr, folder / "sr.dcm")
    heatmaps = [_save(image, folder / f"heatmap{i}.dcm") for i, image in enumerate(result.secondary)]
    return study, result, path, heatmaps


def test_mammo_sr_passes_dciodvfy(mammo) -> None:
    assert dciodvfy_errors(mammo[2]) == []


def test_mammo_sr_renders_in_dsrdump(mammo) -> None:
    assert dsrdump_ok(mammo[2])
    assert "Mammography CAD Report" in dsrdump_text(mammo[2])


def test_mammo_sr_is_a_tid_4000_mammography_cad_sr(mammo) -> None:
    sr = pydicom.dcmread(mammo[2])
    assert sr.SOPClassUID == MAMMOGRAPHY_CAD_SR_STORAGE
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "4000"
    assert sr.ConceptNameCodeSequence[0].CodeValue == codes.MAMMOGRAPHY_CAD_REPORT.value


def test_mammo_sr_references_exactly_the_four_views(mammo) -> None:
    study, _, path, _ = mammo
    sr = pydicom.dcmread(path)
    expected = sorted(str(ds.SOPInstanceUID) for ds in study.datasets)
    assert sorted(_evidence_uids(sr)) == expected
    ((library, _),) = _named(sr, codes.IMAGE_LIBRARY)
    assert sorted(str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in library.ContentSequence) == expected


def test_mammo_findings_read_back_with_the_event_values(mammo) -> None:
    _, result, path, _ = mammo
    sr = pydicom.dcmread(path)
    content = hd.sr.ContentSequence.from_sequence(sr.ContentSequence)  # highdicom parses the whole tree
    assert len(content) > 0
    findings = [(i, p) for i, p in _named(sr, codes.SINGLE_IMAGE_FINDING)
                if _code(i) != _as_tuple(codes.BREAST_COMPOSITION)]
    assert len(findings) == len(result.event.findings) == 2
    for (item, _), finding in zip(findings, result.event.findings):
        assert _code(item) == _as_tuple(codes.MAMMO_FINDING_CODES[finding.type])
        children = {c.ConceptNameCodeSequence[0].CodeValue: c for c in item.ContentSequence}
        certainty = hd.sr.NumContentItem.from_dataset(children[codes.CERTAINTY_OF_FINDING.value])
        assert certainty.value == pytest.approx(finding.score * 100.0, abs=1e-9)
        centre = hd.sr.ScoordContentItem.from_dataset(children[codes.CENTER.value])
        # (column, row) of the pixel centre: image coordinates start at the first pixel's corner
        assert centre.value.reshape(-1).tolist() == [finding.center_px[1] + 0.5, finding.center_px[0] + 0.5]
        image = children[codes.CENTER.value].ContentSequence[0]
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == finding.sop_instance_uid
        outline = hd.sr.ScoordContentItem.from_dataset(children[codes.OUTLINE.value]).value
        r0, c0, r1, c1 = finding.bbox_px
        assert (outline[:, 1].min(), outline[:, 0].min(), outline[:, 1].max(), outline[:, 0].max()) == (r0, c0, r1, c1)


def test_mammo_exam_level_values_are_in_the_sr(mammo) -> None:
    _, result, path, _ = mammo
    sr = pydicom.dcmread(path)
    category = result.event.category
    ((score, parents),) = _named(sr, codes.EXAM_SCORE)
    assert hd.sr.NumContentItem.from_dataset(score).value == category.exam_score
    assert parents[-1].ConceptNameCodeSequence[0].CodeValue == codes.CAD_PROCESSING_AND_FINDINGS_SUMMARY.value
    ((probability, _),) = [(i, p) for i, p in _named(sr, codes.PROBABILITY_OF_CANCER) if len(p) == 1]
    assert hd.sr.NumContentItem.from_dataset(probability).value == pytest.approx(
        category.malignancy_probability * 100.0, abs=1e-9)
    ((follow_up, _),) = _named(sr, codes.RECOMMENDED_FOLLOW_UP)  # TID 4002: the recall suggestion
    assert _code(follow_up) == _as_tuple(codes.FOLLOW_UP_RECALL if category.recall else codes.FOLLOW_UP_ROUTINE)
    # TID 4006 "Breast composition" finding carrying TID 4007's BI-RADS category
    ((density, parents),) = [(i, p) for i, p in _named(sr, codes.BREAST_COMPOSITION) if "ConceptCodeSequence" in i
                             and i.ConceptCodeSequence[0].CodeValue != codes.BREAST_COMPOSITION.value]
    assert _code(density) == _as_tuple(codes.DENSITY_CODES[category.density])
    assert _code(parents[-1]) == _as_tuple(codes.BREAST_COMPOSITION)


def test_mammo_replay_is_byte_identical() -> None:
    study = cases.mammo_study()
    first = build_result(study, cases.mammo_inference(study), SETTINGS, now=cases.NOW)
    again = build_result(cases.mammo_study(), cases.mammo_inference(cases.mammo_study()), SETTINGS)
    assert _bytes(first.sr) == _bytes(again.sr)
    assert [_bytes(i) for i in first.secondary] == [_bytes(i) for i in again.secondary]


def test_mammo_without_findings(tmp_path: Path) -> None:
    study = cases.mammo_study()
    result = build_result(study, cases.mammo_inference(study, findings=False), SETTINGS, now=cases.NOW)
    path = _save(result.sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == [] and dsrdump_ok(path)
    sr = pydicom.dcmread(path)
    ((summary, _),) = _named(sr, codes.CAD_PROCESSING_AND_FINDINGS_SUMMARY)
    assert _code(summary) == _as_tuple(codes.ALL_SUCCEEDED_WITHOUT_FINDINGS)
    assert result.event.findings == [] and result.event.category.exam_score == 1


def test_heatmaps_are_valid_secondary_captures_of_each_view(mammo) -> None:
    study, _, _, paths = mammo
    assert len(paths) == 4
    sources = []
    for path in paths:
        assert dciodvfy_errors(path) == []
        image = pydicom.dcmread(path)
        assert image.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
        assert image.PhotometricInterpretation == "RGB" and image.StudyInstanceUID == study.study_instance_uid
        sources.append(str(image.SourceImageSequence[0].ReferencedSOPInstanceUID))
    assert sorted(sources) == sorted(str(ds.SOPInstanceUID) for ds in study.datasets)


def test_heatmap_shows_the_hot_region(mammo) -> None:
    study, result, _, _ = mammo
    finding = result.event.findings[0]
    (image,) = [i for i in result.secondary
                if i.SourceImageSequence[0].ReferencedSOPInstanceUID == finding.sop_instance_uid]
    rgb = image.pixel_array.astype(int)
    redness = rgb[..., 0] - rgb[..., 1]
    hot = np.unravel_index(np.argmax(redness), redness.shape)
    source = next(ds for ds in study.datasets if ds.SOPInstanceUID == finding.sop_instance_uid)
    # the hottest heatmap pixel lies in the 1/16 x 1/12 cell that holds the finding centre
    assert abs(hot[0] / int(image.Rows) - finding.center_px[0] / int(source.Rows)) < 1 / 16 + 0.02
    assert abs(hot[1] / int(image.Columns) - finding.center_px[1] / int(source.Columns)) < 1 / 12 + 0.02



# --- template-level validation (PixelMed DicomSRValidator, when installed) ------------------------

# PixelMed (2022) wants TID 4007 under the TID 4006 CODE by CONTAINS, which PS3.3 Table A.35.5-2 forbids
# under a CODE item (its own IOD check then reports an illegal relationship); we follow the IOD table.
_KNOWN_PIXELMED_TEMPLATE_CONFLICT = "Template 4007 BreastComposition"


@pytest.fixture(scope="module")
def mammo_served(tmp_path_factory) -> Path:
    """The SR of the findings the served classifier reports: heatmap regions ("Selected region")."""
    study = cases.mammo_study()
    result = build_result(study, cases.mammo_inference(study, served_types=True), SETTINGS, now=cases.NOW)
    return _save(result.sr, tmp_path_factory.mktemp("mammo-served") / "sr.dcm")


@pytest.mark.parametrize("which", ["lesion types", "served regions"])
def test_mammography_cad_sr_template_validates_row_by_row(mammo, mammo_served, which) -> None:
    # only the hand-built TID 4000 tree: TID 1500 comes from highdicom's template classes, and each
    # validator run costs about 10 s here (checked by hand: the LDCT SRs report no errors)
    path = mammo[2] if which == "lesion types" else mammo_served
    assert sr_validator_available(), "PixelMed DicomSRValidator (Debian pixelmed-apps) is not installed"
    errors = sr_validator_errors(path)
    assert [e for e in errors if _KNOWN_PIXELMED_TEMPLATE_CONFLICT not in e] == []


def test_a_selected_region_finding_describes_itself(mammo_served) -> None:  # TID 4013 row 1
    assert dciodvfy_errors(mammo_served) == []
    sr = pydicom.dcmread(mammo_served)
    findings = [item for item, _ in _named(sr, codes.SINGLE_IMAGE_FINDING)
                if item.ConceptCodeSequence[0].CodeValue == codes.MAMMO_FINDING_CODES["region"].value]
    assert findings
    for finding in findings:
        texts = [c.TextValue for c in finding.ContentSequence if c.ValueType == "TEXT"
                 and c.ConceptNameCodeSequence[0].CodeValue == codes.SELECTED_REGION_DESCRIPTION.value]
        assert texts == [REGION_DESCRIPTION]
