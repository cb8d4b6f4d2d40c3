"""DICOM SEG of LDCT nodule masks: valid (dciodvfy), read back by highdicom voxel for voxel, linked to
the SR by tracking UID, referencing the source series, and skipped when there is nothing to segment."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from oncostream.settings import Settings
from oncostream.study import BoxMask
from postprocess.results import build_result
from tests.dicom_tools import dciodvfy_errors
from tests.unit import screening_cases as cases

SETTINGS = Settings()


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    study = cases.ldct_study()
    result = build_result(study, cases.ldct_inference(), SETTINGS, now=cases.NOW)
    assert len(result.segs) == 1
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    result.segs[0].save_as(path, enforce_file_format=True)
    return study, result, path


def test_seg_passes_dciodvfy(seg) -> None:
    assert dciodvfy_errors(seg[2]) == []


def test_seg_is_binary_and_named_in_the_event(seg) -> None:
    _, result, path = seg
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert ds.SegmentationType == "BINARY"
    assert result.event.seg_sop_instance_uids == [str(ds.SOPInstanceUID)]
    assert ds.StudyInstanceUID == result.event.study_instance_uid


def test_seg_references_the_source_series(seg) -> None:
    study, _, path = seg
    ds = pydicom.dcmread(path)
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == study.datasets[0].SeriesInstanceUID
    referenced = {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedInstanceSequence}
    assert referenced <= {str(d.SOPInstanceUID) for d in study.datasets}
    assert ds.FrameOfReferenceUID == study.datasets[0].FrameOfReferenceUID


def test_highdicom_reads_back_the_masks_voxel_for_voxel(seg) -> None:
    study, result, path = seg
    read = hd.seg.segread(path)
    labels = cases.ldct_phantom().labels
    source_uids = [str(d.SOPInstanceUID) for d in study.datasets]
    for number, finding in enumerate(result.event.findings, start=1):
        description = read.get_segment_description(number)
        assert description.tracking_uid == finding.tracking_uid  # same UID as the SR measurement group
        mask = read.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, segment_numbers=[number],
                                                  combine_segments=False, skip_overlap_checks=True,
                                                  assert_missing_frames_are_empty=True)[..., 0]
        np.testing.assert_array_equal(mask.astype(bool), labels == number)


def test_nodules_without_masks_give_no_seg() -> None:
    result = build_result(cases.ldct_study(), cases.ldct_inference(with_masks=False), SETTINGS, now=cases.NOW)
    assert result.segs == [] and result.event.seg_sop_instance_uids == []
    assert len(result.event.findings) == 2  # the findings and SR are still there


def test_seg_replay_is_byte_identical(seg) -> None:
    def as_bytes(ds) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    again = build_result(cases.ldct_study(), cases.ldct_inference(), SETTINGS)
    assert as_bytes(again.segs[0]) == Path(seg[2]).read_bytes()


def test_mask_on_another_grid_is_refused() -> None:
    inference = cases.ldct_inference()
    inference.nodules[0].mask = BoxMask((0, 0, 0), np.ones((2, 2, 2), dtype=bool), (2, 2, 2))
    with pytest.raises(ValueError, match="mask"):
        build_result(cases.ldct_study(), inference, SETTINGS, now=cases.NOW)
