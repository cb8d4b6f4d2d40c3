"""`oncostream gateway` (ingest/gateway.py) as a subprocess, fed by DCMTK's `storescu` — a real
client nobody here wrote — and by a pynetdicom SCU where the exact DIMSE status matters.

- Kafka mode: every instance lands on the DICOM topic, keyed by StudyInstanceUID, with the contract
  headers, and with the data set bytes exactly as sent (compressed pixel data is not re-encoded).
- Calling-AE allow-list: an unknown AE's association is rejected before any data moves.
- Unusable instances get 0xC000 with an ErrorComment naming the reason.
- Embedded mode: a synthetic LDCT series ends as a triage record and an SR under --out.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from oncostream.settings import REPO_ROOT
from oncostream.uids import derive_uid

pytestmark = pytest.mark.integration

AE_TITLE = "ONCOSTREAM"
ALLOWED = "STORESCU"
ORTHANC_AE = "ORTHANC"  # oncostream.services.orthanc.DEFAULT_AE_TITLE, Orthanc's calling AE title
START_TIMEOUT_S = 120.0  # the embedded mode loads every ONNX model before it listens
# the pydicom corpus's real CT image, re-encoded once per transfer syntax the gateway must take
# unchanged (pydicom's encoders; DCMTK's dcmcjpeg for JPEG lossless, which pydicom cannot write)
TRANSFER_SYNTAXES = {
    "explicit-le": ExplicitVRLittleEndian,
    "implicit-le": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls-lossless": JPEGLSLossless,
    "j2k-lossless": JPEG2000Lossless,
    "jpeg-lossless-sv1": JPEGLosslessSV1,
}

needs_storescu = pytest.mark.skipif(shutil.which("storescu") is None,
                                    reason="DCMTK storescu is not installed (scripts/install_system_deps.sh)")


class GatewayProcess:
    """`oncostream gateway --port 0 ...` in its own session; the port comes from its first stdout line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, log_path: Path | None = None):
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "oncostream.cli", "gateway", "--port", "0", "--ae-title", AE_TITLE, *args],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True)
        self.port, self.metrics_port = self._read_ports(log_path)

    def _read_ports(self, log_path: Path | None) -> tuple[int, int | None]:
        """(DICOM port, metrics port or None) from the line the gateway prints once it listens."""
        deadline = time.monotonic() + START_TIMEOUT_S
        line = b""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
                pytest.fail(f"gateway exited with {self.process.returncode}\n{tail}")
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                line = self.process.stdout.readline()
                if b"listening on port" in line:
                    metrics = line.split(b"metrics on port ")[1] if b"metrics on port " in line else None
                    return (int(line.split(b"listening on port ")[1].split(b",")[0]),
                            int(metrics) if metrics is not None else None)
        pytest.fail(f"gateway did not listen within {START_TIMEOUT_S:.0f} s (last line {line!r})")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.process.returncode


# storescu proposes uncompressed syntaxes unless told which compressed one to offer as well; with
# these it sends a compressed file as it is instead of decompressing it
STORESCU_PROPOSE = {
    "explicit-le": [], "implicit-le": [], "rle": ["-xr"], "jpeg-ls-lossless": ["-xt"],
    "j2k-lossless": ["-xv"], "jpeg-lossless-sv1": ["-xs"],
}


def _storescu(port: int, files: list[Path], calling_ae: str = ALLOWED,
              options: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", *options, "-aet", calling_ae, "-aec", AE_TITLE, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def _consume(bootstrap: str, topic: str, count: int, timeout_s: float = 30.0) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def _topic_size(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def ct_corpus(tmp_path_factory) -> dict[str, Path]:
    """name -> file: CT_small.dcm in each transfer syntax, each with its own SOPInstanceUID."""
    folder = tmp_path_factory.mktemp("ct-corpus")
    files = {}
    for name, syntax in TRANSFER_SYNTAXES.items():
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = derive_uid(ds.SOPInstanceUID, name)
        path = folder / f"{name}.dcm"
        if syntax == JPEGLosslessSV1:
            ds.save_as(folder / "plain.dcm", enforce_file_format=True)
            subprocess.run(["dcmcjpeg", "+e1", str(folder / "plain.dcm"), str(path)], check=True, timeout=60)
        else:
            if syntax.is_compressed:
                ds.compress(syntax)
            else:
                ds.file_meta.TransferSyntaxUID = syntax
            ds.save_as(path, enforce_file_format=True)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
        files[name] = path
    return files


@pytest.fixture
def kafka_gateway(kafka_topics, tmp_path):
    env = {**kafka_topics.env(), "ONCOSTREAM_CLAIM_CHECK_DIR": str(tmp_path / "claims")}
    gateway = GatewayProcess(["--bootstrap", kafka_topics.bootstrap, "--allow", ALLOWED, "--allow", ORTHANC_AE],
                             env=env,
                             log_path=tmp_path / "gateway.log")
    yield gateway, kafka_topics
    assert gateway.stop() == 0, "gateway did not shut down cleanly on SIGTERM"


@needs_storescu
def test_storescu_instances_reach_kafka_unchanged(kafka_gateway, ct_corpus):
    gateway, topics = kafka_gateway
    files = ct_corpus
    for name, path in files.items():
        sent = _storescu(gateway.port, [path], options=STORESCU_PROPOSE[name])
        assert sent.returncode == 0, name + ": " + sent.stdout + sent.stderr
    records = _consume(topics.bootstrap, topics.dicom, len(files))
    assert len(records) == len(files)
    by_sop = {pydicom.dcmread(io.BytesIO(r.value)).SOPInstanceUID: r for r in records}
    for name, path in files.items():
        original = pydicom.dcmread(path)
        record = by_sop[original.SOPInstanceUID]
        received = pydicom.dcmread(io.BytesIO(record.value))
        headers = {k: v.decode() for k, v in record.headers}
        assert record.key.decode() == original.StudyInstanceUID, name
        assert headers["content-type"] == "application/dicom", name
        assert headers["program"] == "default" and len(headers["trace-id"]) == 32, name
        assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, name
        assert received.PixelData == original.PixelData, name  # compressed frames travel as sent
        assert received.SeriesInstanceUID == original.SeriesInstanceUID, name


@needs_storescu
def test_unknown_calling_ae_is_rejected_before_any_data(kafka_gateway):
    gateway, topics = kafka_gateway
    refused = _storescu(gateway.port, [Path(get_testdata_file("CT_small.dcm"))], calling_ae="INTRUDER")
    assert refused.returncode != 0
    assert "rejected" in (refused.stdout + refused.stderr).lower()
    assert _topic_size(topics.bootstrap, topics.dicom) == 0


@needs_storescu
def test_echoscu_verifies_the_link(kafka_gateway):
    gateway, _ = kafka_gateway
    echo = subprocess.run(["echoscu", "-aet", ALLOWED, "-aec", AE_TITLE, "127.0.0.1", str(gateway.port)],
                          capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0, echo.stdout + echo.stderr


def _c_store(port: int, ds: pydicom.Dataset, calling_ae: str = ALLOWED) -> pydicom.Dataset:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


@pytest.mark.parametrize("breakage, reason", [
    ("PixelData", "missing_pixel_data"),
    ("StudyInstanceUID", "missing_attribute"),
], ids=["no-pixel-data", "no-study-uid"])
def test_unusable_instance_gets_cannot_understand(kafka_gateway, breakage, reason):
    gateway, topics = kafka_gateway
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds[breakage]
    status = _c_store(gateway.port, ds)
    assert status.Status == 0xC000
    assert status.ErrorComment.startswith(reason)
    assert _topic_size(topics.bootstrap, topics.dicom) == 0


def test_good_instance_gets_success(kafka_gateway):
    gateway, topics = kafka_gateway
    status = _c_store(gateway.port, pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    assert status.Status == 0x0000
    assert _topic_size(topics.bootstrap, topics.dicom) == 1


@needs_storescu
def test_storescu_study_is_triaged_by_the_embedded_pipeline(tmp_path):
    """The whole path without Kafka: storescu -> gateway -> assembly -> inference -> triage + SR."""
    from oncostream.synth.ldct import ldct_datasets, make_ldct_phantom

    study_dir = tmp_path / "study"
    study_dir.mkdir()
    datasets = ldct_datasets(make_ldct_phantom(seed=3, size="small"))
    for i, ds in enumerate(datasets):
        ds.save_as(study_dir / f"{i:04d}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    env = {**os.environ, "ONCOSTREAM_ASSEMBLY_TIMEOUT_S": "5"}
    gateway = GatewayProcess(["--out", str(out), "--allow", ALLOWED, "--host", "127.0.0.1", "--metrics-port", "0"],
                             env=env, log_path=tmp_path / "gateway.log")
    try:
        sent = _storescu(gateway.port, sorted(study_dir.iterdir()))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        triage = out / "triage.jsonl"
        deadline = time.monotonic() + 180
        while not (triage.exists() and triage.read_text().strip()):
            assert gateway.process.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no triage record within 180 s"
            time.sleep(0.5)
        # what ops watch: every C-STORE answered and counted, none rejected
        families = {f.name: f for f in text_string_to_metric_families(
            requests.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).text)}
        stores = {s.labels["status"]: s.value for s in families["oncostream_gateway_stores"].samples
                  if s.name.endswith("_total")}
        assert stores == {"success": len(datasets)}
        assert [s.value for s in families["oncostream_instances"].samples if s.name.endswith("_total")] == [len(datasets)]
    finally:
        assert gateway.stop() == 0
    events = [json.loads(line) for line in triage.read_text().splitlines() if line.strip()]
    assert [e["study_instance_uid"] for e in events] == [datasets[0].StudyInstanceUID]
    event = events[0]
    assert event["modality"] == "CT" and not event["incomplete"]
    sr_path = out / "sr" / f"{event['sr_sop_instance_uid']}.dcm"
    assert sr_path.exists()
    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == datasets[0].StudyInstanceUID


def test_orthanc_forwards_to_the_gateway(kafka_gateway, orthanc_empty):
    """A real PACS as the sender: Orthanc C-STOREs an instance it holds to the gateway."""
    gateway, topics = kafka_gateway
    http = orthanc_empty.env["ORTHANC_HTTP"]
    path = Path(get_testdata_file("CT_small.dcm"))
    uploaded = requests.post(f"{http}/instances", data=path.read_bytes(), timeout=30)
    uploaded.raise_for_status()
    requests.put(f"{http}/modalities/oncostream", json={"AET": AE_TITLE, "Host": "127.0.0.1", "Port": gateway.port},
                 timeout=10).raise_for_status()
    try:
        stored = requests.post(f"{http}/modalities/oncostream/store", json={"Resources": [uploaded.json()["ID"]],
                                                                         "Synchronous": True}, timeout=60)
        assert stored.ok, stored.text
    finally:
        requests.delete(f"{http}/modalities/oncostream", timeout=10)
    records = _consume(topics.bootstrap, topics.dicom, 1)
    assert len(records) == 1
    original = pydicom.dcmread(path)
    received = pydicom.dcmread(io.BytesIO(records[0].value))
    assert records[0].key.decode() == original.StudyInstanceUID
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert received.PixelData == original.PixelData


def test_kafka_failure_gets_out_of_resources(kafka_topics):
    """The broker is up but the topic is missing (auto-creation is off): the producer cannot hand the
    instance on, and the sender hears 0xA700 with a comment rather than a false success."""
    from ingest.gateway import Gateway, KafkaDestination

    settings = kafka_topics.settings().model_copy(update={"topic_dicom": kafka_topics.dicom + ".missing"})
    destination = KafkaDestination(settings, kafka_topics.bootstrap, produce_timeout_s=3)
    gateway = Gateway(destination, ae_title=AE_TITLE, allow=[ALLOWED])
    port = gateway.start(0, host="127.0.0.1")
    try:
        status = _c_store(port, pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    finally:
        gateway.stop()
        destination.close()
    assert status.Status == 0xA700
    assert "cannot hand on instance" in status.ErrorComment
