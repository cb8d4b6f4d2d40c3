"""Result delivery to a real Orthanc: C-STORE SCU (postprocess/pacs_sink.py) and STOW-RS
(postprocess/stow_sink.py). Objects are read back through Orthanc's REST API and compared with what
was sent; sending twice leaves one instance per SOPInstanceUID; unreachable peers end in SinkError.

The SR and SEG are built with highdicom over a real CT image of the pydicom test corpus
(CT_small.dcm), with UIDs derived like oncostream's own outputs.
"""

from __future__ import annotations

import io
import time
from datetime import datetime, timezone

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes

from oncostream.contracts import LungRadsCategory, TriageEvent
from oncostream.services.base import free_port
from oncostream.study import Study, StudyResult
from oncostream.uids import derive_uid
from postprocess.errors import SinkError
from postprocess.pacs_sink import Backoff, PacsSink
from postprocess.stow_sink import StowRsSink, multipart_related, part10_bytes

pytestmark = pytest.mark.integration

FAST_BACKOFF = Backoff(attempts=3, initial_s=0.05, max_s=0.2)
# attributes whose encoded values must come back from the PACS exactly as sent
KEY_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                  "SeriesNumber", "InstanceNumber")


def _source_ct() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def _sr(ct: pydicom.Dataset, role: str) -> pydicom.Dataset:
    """A TID 1500 measurement report over the CT, as a Comprehensive 3D SR."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid(ct.SOPInstanceUID, role, "device"), name="oncostream-test"))
    nodule = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derive_uid(ct.SOPInstanceUID, role, "tracking"),
                                                     identifier="nodule 1"),
        measurements=[hd.sr.Measurement(name=codes.SCT.Diameter, value=6.2, unit=codes.UCUM.Millimeter)])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=[nodule])
    return hd.sr.Comprehensive3DSR(
        evidence=[ct], content=report[0], series_instance_uid=derive_uid(ct.SeriesInstanceUID, role, "sr-series"),
        series_number=901, sop_instance_uid=derive_uid(ct.SOPInstanceUID, role, "sr"), instance_number=1,
        manufacturer="oncostream")


def _seg(ct: pydicom.Dataset, role: str) -> pydicom.Dataset:
    mask = np.zeros((1, ct.Rows, ct.Columns), dtype=np.uint8)
    mask[0, 40:60, 50:75] = 1
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="nodule",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="oncostream-test", version="1", family=codes.cid7162.ArtificialIntelligence))
    return hd.seg.Segmentation(
        source_images=[ct], pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=derive_uid(ct.SeriesInstanceUID, role, "seg-series"),
        series_number=902, sop_instance_uid=derive_uid(ct.SOPInstanceUID, role, "seg"), instance_number=1,
        manufacturer="oncostream", manufacturer_model_name="test", software_versions="0",
        device_serial_number="0")


def _result(role: str) -> StudyResult:
    """A study result with one SR and one SEG; ``role`` keeps results of different tests apart."""
    ct = _source_ct()
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    sr, seg = _sr(ct, role), _seg(ct, role)
    event = TriageEvent(study_instance_uid=ct.StudyInstanceUID, program="default", modality="CT",
                        priority="ROUTINE", category=LungRadsCategory(lung_rads="1"), findings=[],
                        confidence=0.9, needs_human_review=False, model_versions={"test": "1"},
                        sr_sop_instance_uid=sr.SOPInstanceUID, seg_sop_instance_uids=[seg.SOPInstanceUID],
                        arrived_at=now, triaged_at=now)
    study = Study(study_instance_uid=ct.StudyInstanceUID, modality="CT", datasets=[ct], arrived_at=now)
    return StudyResult(study=study, event=event, sr=sr, segs=[seg])


def _pacs_sink(orthanc) -> PacsSink:
    return PacsSink.from_address(orthanc.env["ORTHANC_DICOM"], called_ae=orthanc.extra["ae_title"],
                                 backoff=FAST_BACKOFF)


def _stow_sink(orthanc) -> StowRsSink:
    return StowRsSink(orthanc.extra["dicomweb_root"], backoff=FAST_BACKOFF)


SINKS = {"c-store": _pacs_sink, "stow-rs": _stow_sink}


def _stored(http: str, sop_instance_uid: str) -> list[str]:
    """Orthanc ids of every stored instance with this SOPInstanceUID."""
    response = requests.post(f"{http}/tools/find", json={"Level": "Instance", "Query":
                                                         {"SOPInstanceUID": sop_instance_uid}}, timeout=10)
    response.raise_for_status()
    return response.json()


def _read_back(http: str, orthanc_id: str) -> pydicom.Dataset:
    response = requests.get(f"{http}/instances/{orthanc_id}/file", timeout=10)
    response.raise_for_status()
    return pydicom.dcmread(io.BytesIO(response.content))


@pytest.mark.parametrize("make_sink", SINKS.values(), ids=SINKS.keys())
def test_sr_and_seg_reach_orthanc_unchanged(orthanc_empty, make_sink):
    result = _result("roundtrip")
    sink = make_sink(orthanc_empty)
    sink.add(result)
    sink.flush(timeout_s=30)
    sink.close()
    http = orthanc_empty.env["ORTHANC_HTTP"]
    for sent in (result.sr, *result.segs):
        ids = _stored(http, sent.SOPInstanceUID)
        assert len(ids) == 1, f"{sent.Modality} {sent.SOPInstanceUID} stored {len(ids)} times"
        back = _read_back(http, ids[0])
        for keyword in KEY_ATTRIBUTES:
            assert back[keyword].value == sent[keyword].value, keyword
    seg_back = _read_back(http, _stored(http, result.segs[0].SOPInstanceUID)[0])
    assert seg_back.PixelData == result.segs[0].PixelData
    sr_back = _read_back(http, _stored(http, result.sr.SOPInstanceUID)[0])
    assert sr_back.ContentSequence == result.sr.ContentSequence
    assert len(requests.get(f"{http}/instances", timeout=10).json()) == 2


@pytest.mark.parametrize("make_sink", SINKS.values(), ids=SINKS.keys())
def test_sending_twice_leaves_one_instance(orthanc_empty, make_sink):
    result = _result("twice")
    for _ in range(2):  # a replay after a crash: a fresh sink, the same derived UIDs
        sink = make_sink(orthanc_empty)
        sink.add(result)
        sink.add(result)  # the same result queued twice in one batch is also sent once
        sink.flush(timeout_s=30)
        sink.close()
    http = orthanc_empty.env["ORTHANC_HTTP"]
    assert len(_stored(http, result.sr.SOPInstanceUID)) == 1
    assert len(_stored(http, result.segs[0].SOPInstanceUID)) == 1
    assert len(requests.get(f"{http}/instances", timeout=10).json()) == 2


def test_both_sinks_agree_on_one_instance(orthanc_empty):
    """C-STORE then STOW-RS of the same result: the PACS still holds one copy of each object."""
    result = _result("both")
    for make_sink in SINKS.values():
        sink = make_sink(orthanc_empty)
        sink.add(result)
        sink.flush(timeout_s=30)
        sink.close()
    assert len(requests.get(f"{orthanc_empty.env['ORTHANC_HTTP']}/instances", timeout=10).json()) == 2


UNREACHABLE = {
    "c-store": lambda port: PacsSink("127.0.0.1", port, backoff=FAST_BACKOFF, network_timeout_s=2),
    "stow-rs": lambda port: StowRsSink(f"http://127.0.0.1:{port}/dicom-web", backoff=FAST_BACKOFF,
                                       request_timeout_s=2),
}


@pytest.mark.parametrize("make_sink", UNREACHABLE.values(), ids=UNREACHABLE.keys())
def test_unreachable_peer_ends_in_sink_error_after_backoff(make_sink):
    sink = make_sink(free_port())  # nothing listens there
    sink.add(_result("unreachable"))
    started = time.monotonic()
    with pytest.raises(SinkError) as raised:
        sink.flush(timeout_s=20)
    elapsed = time.monotonic() - started
    assert "2 object(s)" in str(raised.value)
    # three attempts separated by 0.05 s and 0.1 s of backoff: bounded, and not a first-try give-up
    assert 0.15 <= elapsed < 15


def test_stow_rs_to_wrong_path_fails_without_retrying(orthanc):
    sink = StowRsSink(f"{orthanc.env['ORTHANC_HTTP']}/no-such-root", backoff=Backoff(attempts=5, initial_s=5))
    sink.add(_result("wrong-path"))
    started = time.monotonic()
    with pytest.raises(SinkError, match="HTTP 404"):
        sink.flush(timeout_s=30)
    assert time.monotonic() - started < 5  # a 404 is not transient: no backoff wait


def test_flush_with_nothing_queued_sends_nothing():
    # port 1 is never an Orthanc: if flush tried to connect, it would fail
    PacsSink("127.0.0.1", 1, backoff=FAST_BACKOFF).flush(timeout_s=1)
    StowRsSink("http://127.0.0.1:1/dicom-web", backoff=FAST_BACKOFF).flush(timeout_s=1)


def test_part10_bytes_keep_identity_and_multipart_frames_each_file():
    seg = _seg(_source_ct(), "part10")
    data = part10_bytes(seg)
    assert data[128:132] == b"DICM"
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.SOPInstanceUID == seg.SOPInstanceUID
    assert back.file_meta.MediaStorageSOPInstanceUID == seg.SOPInstanceUID
    body = multipart_related([data, b"second"], "BOUNDARY")
    assert body.count(b"--BOUNDARY\r\nContent-Type: application/dicom\r\n\r\n") == 2
    assert body.endswith(b"--BOUNDARY--\r\n")


@pytest.mark.parametrize("kwargs", [
    {"attempts": 0}, {"initial_s": -1.0}, {"max_s": -1.0},
], ids=["no-attempts", "negative-initial", "negative-cap"])
def test_backoff_rejects_impossible_schedules(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_backoff_doubles_up_to_its_cap():
    assert list(Backoff(attempts=6, initial_s=0.5, max_s=3).delays()) == [0.5, 1.0, 2.0, 3.0, 3.0]
