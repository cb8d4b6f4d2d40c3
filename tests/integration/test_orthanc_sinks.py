"""Result delivery to a real Orthanc: C-STORE SCU (postprocess/pacs_sink.py) and STOW-RS
(postprocess/stow_sink.py). Objects are read back through Orthanc's REST API and compared with what
was sent; sending twice leaves one instance per SOPInstanceUID; unreachable peers end in SinkError.

The objects are the pipeline's own (postprocess.results.build_result over a small synthetic LDCT
series and its true nodules: SR + SEG; over a small 4-view exam: CAD SR + heatmaps), so what
reaches the PACS here is what production sends.
"""

from __future__ import annotations

import io
import time
from datetime import datetime, timezone

import numpy as np
import pydicom
import pytest
import requests
from pynetdicom import AE, StoragePresentationContexts, evt

from oncostream.services.base import free_port
from oncostream.settings import Settings
from ingest.assembly import mammo_view_key
from oncostream.study import (
    BoxMask,
    LdctInference,
    MammoInference,
    MammoViewInference,
    NoduleCandidate,
    Study,
    StudyResult,
)
from oncostream.synth.ldct import ldct_datasets, make_ldct_phantom
from oncostream.synth.mammo import make_mammo_phantom, mammo_datasets
from postprocess.results import build_result
from postprocess.errors import SinkError
from postprocess.pacs_sink import Backoff, PacsSink
from postprocess.stow_sink import StowRsSink, multipart_related, part10_bytes

pytestmark = pytest.mark.integration

FAST_BACKOFF = Backoff(attempts=3, initial_s=0.05, max_s=0.2)
# attributes whose encoded values must come back from the PACS exactly as sent
KEY_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                  "SeriesNumber", "InstanceNumber")


@pytest.fixture(scope="module")
def result() -> StudyResult:
    """What the pipeline publishes for a small synthetic LDCT series: a TID 1500 SR (Comprehensive 3D)
    and a SEG, built by postprocess.results.build_result from the phantom's own nodules."""
    phantom = make_ldct_phantom(seed=3, size="small")
    arrived = datetime(2026, 1, 1, tzinfo=timezone.utc)
    study = Study(study_instance_uid=phantom.truth.study_instance_uid, modality="CT",
                  datasets=ldct_datasets(phantom), arrived_at=arrived)
    nodules = [NoduleCandidate(center_mm=n.center_mm, detection_score=0.9, mean_diameter_mm=n.diameter_mm,
                               long_axis_mm=n.diameter_mm * 1.2, volume_mm3=n.volume_mm3, composition=n.composition,
                               malignancy_probability=0.3, uncertainty=0.05, mask=BoxMask.from_dense(phantom.labels == k + 1))
               for k, n in enumerate(phantom.truth.nodules)]
    built = build_result(study, LdctInference(nodules=nodules, model_versions={"ldct_test": "1"}), Settings(),
                         now=arrived)
    assert built.sr is not None and len(built.segs) == 1, "the phantom should give one SR and one SEG"
    return built


@pytest.fixture(scope="module")
def mammo_result() -> StudyResult:
    """What the pipeline publishes for a small synthetic 4-view exam: a Mammography CAD SR (TID 4000)
    and one heatmap per view as secondary objects, from fixed per-view inference values."""
    datasets = mammo_datasets(make_mammo_phantom(seed=2, size="small"))
    arrived = datetime(2026, 1, 1, tzinfo=timezone.utc)
    study = Study(study_instance_uid=datasets[0].StudyInstanceUID, modality="MG", datasets=datasets,
                  arrived_at=arrived)
    heatmap = np.linspace(0, 1, 32 * 24, dtype=np.float32).reshape(32, 24)
    views = [MammoViewInference(sop_instance_uid=ds.SOPInstanceUID, laterality=mammo_view_key(ds)[0],
                                view=mammo_view_key(ds)[1:], malignancy_probability=0.2, heatmap=heatmap,
                                regions=[("mass", (40, 30), (30, 20, 50, 40), 0.7)])
             for ds in datasets]
    inference = MammoInference(views=views, exam_malignancy_probability=0.2,
                               density_probabilities=(0.1, 0.6, 0.2, 0.1), uncertainty=0.05,
                               model_versions={"mammo_test": "1"})
    built = build_result(study, inference, Settings(), now=arrived)
    assert built.sr is not None and len(built.secondary) == 4, "an exam should give one SR and four heatmaps"
    return built


RESULTS = {"ldct-sr-seg": "result", "mammo-sr-heatmaps": "mammo_result"}


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


def _file(http: str, orthanc_id: str) -> bytes:
    response = requests.get(f"{http}/instances/{orthanc_id}/file", timeout=10)
    response.raise_for_status()
    return response.content


def _read_back(http: str, orthanc_id: str) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(_file(http, orthanc_id)))


def _data_set_bytes(part10: bytes) -> bytes:
    """A Part 10 file without preamble and file meta (PS3.10 7.1: the group length follows 'DICM')."""
    assert part10[128:132] == b"DICM"
    group_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL, explicit VR LE
    return part10[144 + group_length:]


@pytest.mark.parametrize("result_fixture", RESULTS.values(), ids=RESULTS.keys())
@pytest.mark.parametrize("make_sink", SINKS.values(), ids=SINKS.keys())
def test_results_reach_orthanc_unchanged(orthanc_empty, make_sink, result_fixture, request):
    result = request.getfixturevalue(result_fixture)
    sink = make_sink(orthanc_empty)
    sink.add(result)
    sink.flush(timeout_s=30)
    sink.close()
    http = orthanc_empty.env["ORTHANC_HTTP"]
    sent_all = [result.sr, *result.segs, *result.secondary]
    for sent in sent_all:
        ids = _stored(http, sent.SOPInstanceUID)
        assert len(ids) == 1, f"{sent.Modality} {sent.SOPInstanceUID} stored {len(ids)} times"
        back = _read_back(http, ids[0])
        for keyword in KEY_ATTRIBUTES:
            assert back[keyword].value == sent[keyword].value, keyword
        # the data set (everything after the file meta) is stored byte for byte as encoded here
        assert _data_set_bytes(_file(http, ids[0])) == _data_set_bytes(part10_bytes(sent))
    assert len(requests.get(f"{http}/instances", timeout=10).json()) == len(sent_all)


@pytest.mark.parametrize("make_sink", SINKS.values(), ids=SINKS.keys())
def test_sending_twice_leaves_one_instance(orthanc_empty, make_sink, result):
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


def test_both_sinks_agree_on_one_instance(orthanc_empty, result):
    """C-STORE then STOW-RS of the same result: the PACS still holds one copy of each object."""
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
def test_unreachable_peer_ends_in_sink_error_after_backoff(make_sink, result):
    sink = make_sink(free_port())  # nothing listens there
    sink.add(result)
    started = time.monotonic()
    with pytest.raises(SinkError) as raised:
        sink.flush(timeout_s=20)
    elapsed = time.monotonic() - started
    assert "2 object(s)" in str(raised.value)
    # three attempts separated by 0.05 s and 0.1 s of backoff: bounded, and not a first-try give-up
    assert 0.15 <= elapsed < 15


def test_unknown_calling_ae_is_refused_by_orthanc(orthanc_empty, result):
    """Orthanc's DICOM port listens on every interface; only known callers from loopback may store."""
    sink = PacsSink.from_address(orthanc_empty.env["ORTHANC_DICOM"], called_ae=orthanc_empty.extra["ae_title"],
                                 calling_ae="INTRUDER", backoff=FAST_BACKOFF, network_timeout_s=5)
    sink.add(result)
    with pytest.raises(SinkError):
        sink.flush(timeout_s=20)
    assert requests.get(f"{orthanc_empty.env['ORTHANC_HTTP']}/instances", timeout=10).json() == []


def test_stow_rs_to_wrong_path_fails_without_retrying(orthanc, result):
    sink = StowRsSink(f"{orthanc.env['ORTHANC_HTTP']}/no-such-root", backoff=Backoff(attempts=5, initial_s=5))
    sink.add(result)
    started = time.monotonic()
    with pytest.raises(SinkError, match="HTTP 404"):
        sink.flush(timeout_s=30)
    assert time.monotonic() - started < 5  # a 404 is not transient: no backoff wait


def test_flush_with_nothing_queued_sends_nothing():
    # port 1 is never an Orthanc: if flush tried to connect, it would fail
    PacsSink("127.0.0.1", 1, backoff=FAST_BACKOFF).flush(timeout_s=1)
    StowRsSink("http://127.0.0.1:1/dicom-web", backoff=FAST_BACKOFF).flush(timeout_s=1)


def test_part10_bytes_keep_identity_and_multipart_frames_each_file(result):
    seg = result.segs[0]
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


class ScriptedStorageScp:
    """A pynetdicom Storage SCP answering C-STOREs with the given statuses in turn (then success):
    the DIMSE statuses a busy or strict PACS sends, which Orthanc cannot be made to send on demand."""

    def __init__(self, statuses: list[int]):
        self.statuses = list(statuses)
        self.received: list[str] = []
        ae = AE(ae_title="SCRIPTED")
        ae.supported_contexts = StoragePresentationContexts
        self._server = ae.start_server(("127.0.0.1", 0), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self._server.server_address[1]

    def _on_store(self, event) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return self.statuses.pop(0) if self.statuses else 0x0000

    def stop(self) -> None:
        self._server.shutdown()


@pytest.fixture
def scripted_scp(request):
    scp = ScriptedStorageScp(request.param)
    yield scp
    scp.stop()


@pytest.mark.parametrize("scripted_scp", [[0xA700, 0xA701]], ids=["out-of-resources-twice"], indirect=True)
def test_out_of_resources_is_retried_until_stored(scripted_scp, result):
    sink = PacsSink("127.0.0.1", scripted_scp.port, called_ae="SCRIPTED", backoff=FAST_BACKOFF)
    sink.add(result)
    sink.flush(timeout_s=20)
    # SR refused twice, then SR and SEG stored: every object sent until accepted, none after
    assert scripted_scp.received == [result.sr.SOPInstanceUID] * 3 + [result.segs[0].SOPInstanceUID]


@pytest.mark.parametrize("scripted_scp", [[0xC000], [0xA900]], ids=["cannot-understand", "does-not-match-sop-class"],
                         indirect=True)
def test_permanent_failure_status_is_not_retried(scripted_scp, result):
    sink = PacsSink("127.0.0.1", scripted_scp.port, called_ae="SCRIPTED",
                    backoff=Backoff(attempts=5, initial_s=5))
    sink.add(result)
    started = time.monotonic()
    with pytest.raises(SinkError, match="C-STORE status 0x"):
        sink.flush(timeout_s=30)
    assert time.monotonic() - started < 5
    assert scripted_scp.received == [result.sr.SOPInstanceUID]
