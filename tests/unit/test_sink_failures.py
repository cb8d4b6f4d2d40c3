"""Sinks under refusal: a refused record is never forgotten before it is checked, a permanently refused
object does not block later studies, and a torn last line of triage.jsonl does not stop a restart."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from postprocess.errors import SinkError

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR Storage


class _Future:
    def __init__(self, exception=None):
        self.is_done = True
        self.exception = exception

    def failed(self) -> bool:
        return self.exception is not None


class RefusingProducer:
    """A KafkaProducer stand-in whose broker refuses every record sent while `refuse` is set."""

    def __init__(self, exception):
        self.exception = exception
        self.refuse = True
        self.sent = []

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append(topic)
        return _Future(self.exception if self.refuse else None)

    def flush(self, timeout=None):
        pass


def output(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SR_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.Modality = "SR"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SR_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def result(study_uid: str | None = None):
    study_uid = study_uid or generate_uid()
    sr = output(study_uid)
    event = SimpleNamespace(study_instance_uid=study_uid, schema_version="1", sr_sop_instance_uid=sr.SOPInstanceUID,
                            model_dump_json=lambda: json.dumps({"study_instance_uid": study_uid,
                                                                "sr_sop_instance_uid": sr.SOPInstanceUID}))
    return SimpleNamespace(event=event, sr=sr, segs=[], secondary=[])


def test_kafka_sink_keeps_failing_a_refused_study_until_it_is_resent():
    from kafka.errors import KafkaTimeoutError

    from postprocess.kafka_sink import KafkaSink

    producer = RefusingProducer(KafkaTimeoutError("broker gone"))
    sink = KafkaSink(producer, "triage", "results")
    r = result()
    sink.add(r)
    with pytest.raises(SinkError) as first:
        sink.flush(1)
    assert first.value.studies == (r.event.study_instance_uid,) and not first.value.permanent
    with pytest.raises(SinkError):  # the refused records were not forgotten by the first flush
        sink.flush(1)
    producer.refuse = False
    sink.add(r)  # resent by the lifecycle
    sink.flush(1)


def test_kafka_sink_reports_a_non_retriable_refusal_as_permanent_and_forgets_a_discarded_study():
    from kafka.errors import MessageSizeTooLargeError

    from postprocess.kafka_sink import KafkaSink

    producer = RefusingProducer(MessageSizeTooLargeError("too large"))
    sink = KafkaSink(producer, "triage", "results")
    r = result()
    sink.add(r)
    with pytest.raises(SinkError) as raised:
        sink.flush(1)
    assert raised.value.permanent
    sink.discard(r.event.study_instance_uid)
    sink.flush(1)


def test_file_sink_cuts_a_torn_last_line_and_starts(tmp_path):
    from postprocess.file_sink import FileSink

    good = json.dumps({"study_instance_uid": "1.2.3", "sr_sop_instance_uid": "1.2.3.4"})
    (tmp_path / "triage.jsonl").write_text(good + "\n" + '{"study_instance_uid": "1.2.')
    sink = FileSink(tmp_path)
    r = result()
    sink.add(r)
    sink.close()
    lines = (tmp_path / "triage.jsonl").read_text().splitlines()
    assert [json.loads(line)["study_instance_uid"] for line in lines] == ["1.2.3", r.event.study_instance_uid]


def test_file_sink_refuses_a_file_broken_before_its_end(tmp_path):
    from postprocess.file_sink import FileSink

    (tmp_path / "triage.jsonl").write_text("not json\n" + json.dumps({"study_instance_uid": "1"}) + "\n")
    with pytest.raises(SinkError):
        FileSink(tmp_path)


@pytest.fixture
def refusing_scp():
    """A real C-STORE SCP (pynetdicom, loopback) that refuses objects of studies in `refused` with 0xA900."""
    from pynetdicom import AE, evt

    refused: set[str] = set()
    stored: list[str] = []

    def on_store(event):
        ds = event.dataset
        if str(ds.StudyInstanceUID) in refused:
            return 0xA900  # data set does not match SOP class: sending it again will not help
        stored.append(str(ds.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="REFUSER")
    ae.add_supported_context(SR_CLASS, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield SimpleNamespace(port=server.server_address[1], refused=refused, stored=stored)
    finally:
        server.shutdown()


def test_pacs_sink_drops_a_permanently_refused_study_and_later_studies_flow(refusing_scp):
    from postprocess.pacs_sink import Backoff, PacsSink

    sink = PacsSink("127.0.0.1", refusing_scp.port, called_ae="REFUSER", backoff=Backoff(attempts=1),
                    network_timeout_s=10)
    bad, good = result(), result()
    refusing_scp.refused.add(bad.event.study_instance_uid)
    sink.add(bad)
    with pytest.raises(SinkError) as raised:
        sink.flush(20)
    assert raised.value.permanent and raised.value.studies == (bad.event.study_instance_uid,)
    assert "0xA900" in str(raised.value)
    sink.add(good)
    sink.flush(20)
    assert refusing_scp.stored == [good.sr.SOPInstanceUID]


class _StowSession:
    """A requests.Session stand-in for an origin server that refuses objects of `refused` studies (0xC000)."""

    def __init__(self):
        self.refused: set[str] = set()
        self.auth = None
        self.posts = 0

    def post(self, url, data=None, headers=None, timeout=None):
        import pydicom
        from io import BytesIO

        self.posts += 1
        boundary = headers["Content-Type"].split("boundary=")[1].encode()
        failed = []
        for part in data.split(b"--" + boundary)[1:-1]:
            body = part.split(b"\r\n\r\n", 1)[1][:-2]
            ds = pydicom.dcmread(BytesIO(body))
            if str(ds.StudyInstanceUID) in self.refused:
                failed.append({"00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
                               "00081197": {"vr": "US", "Value": [0xC000]}})
        status = 409 if failed else 200
        payload = {"00081198": {"vr": "SQ", "Value": failed}} if failed else {}
        return SimpleNamespace(status_code=status, content=json.dumps(payload).encode(), text=json.dumps(payload),
                               json=lambda: payload)

    def close(self):
        pass


def test_stow_sink_drops_a_permanently_refused_study_and_later_studies_flow():
    from postprocess.pacs_sink import Backoff
    from postprocess.stow_sink import StowRsSink

    session = _StowSession()
    sink = StowRsSink("http://127.0.0.1:1/dicom-web", backoff=Backoff(attempts=1), session=session)
    bad, good = result(), result()
    session.refused.add(bad.event.study_instance_uid)
    sink.add(bad)
    with pytest.raises(SinkError) as raised:
        sink.flush(5)
    assert raised.value.permanent and raised.value.studies == (bad.event.study_instance_uid,)
    sink.add(good)
    sink.flush(5)
    assert session.posts == 2


def test_file_sink_refuses_different_content_under_an_existing_uid(tmp_path):
    from postprocess.file_sink import FileSink

    sink = FileSink(tmp_path)
    first = result()
    sink.add(first)
    sink.flush()
    path = tmp_path / "sr" / f"{first.sr.SOPInstanceUID}.dcm"
    before = path.read_bytes()
    sink.add(first)  # a replay: the same bytes are fine
    changed = result(first.event.study_instance_uid)
    changed.sr.SOPInstanceUID = first.sr.SOPInstanceUID
    changed.sr.Modality = "OT"  # different content under the same UID
    with pytest.raises(SinkError) as raised:
        sink.add(changed)
    assert raised.value.permanent and path.read_bytes() == before
