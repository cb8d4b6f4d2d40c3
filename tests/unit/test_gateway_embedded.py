"""The gateway's embedded mode under faults, in process: a real storage SCP (pynetdicom) on loopback fed
by a real SCU, with the study lifecycle's processing and sink replaced by fakes (no models).

Durable before 0x0000 (spool replayed on restart), a study retried while the backend is away however
long, a deterministic refusal answered 0xC000, and an unwritable rejection log answered 0xA700 instead
of a silent 0x0000 while the pipeline thread stays alive.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE

from ingest.gateway import Gateway
from oncostream.app.gateway import PipelineDestination
from oncostream.errors import BackendUnavailable, StudyFailed
from oncostream.settings import Settings

AE_TITLE, CALLING = "ONCOSTREAM", "TESTSCU"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def exam(tmp_path_factory) -> list[Path]:
    """One small synthetic 4-view mammography exam."""
    from oncostream.synth.command import write_studies

    root = tmp_path_factory.mktemp("exam")
    (folder,) = write_studies(root, mammo=1, ldct=0, seed=7, size="small")
    return sorted(folder.glob("*.dcm"))


class FakePipeline:
    def __init__(self, *failures):
        self.failures = list(failures)

    def process(self, study):
        if self.failures:
            raise self.failures.pop(0)
        event = SimpleNamespace(study_instance_uid=study.study_instance_uid, modality=study.modality,
                                priority="ROUTINE", incomplete=study.incomplete, arrived_at=NOW, triaged_at=NOW)
        return SimpleNamespace(study=study, event=event)


class RecordingSink:
    name = "recording"

    def __init__(self):
        self.published = []

    def add(self, result):
        self._last = result

    def flush(self, timeout_s: float = 60.0):
        self.published.append(self._last.study)

    def discard(self, uid):
        pass

    def close(self):
        pass


def settings(**overrides) -> Settings:
    return Settings(**{"assembly_timeout_s": 60.0, "retry_initial_s": 0.01, "retry_max_s": 0.05, **overrides})


class Running:
    """A destination behind a real SCP on a free loopback port."""

    def __init__(self, out: Path, pipeline=None, **overrides):
        self.sink = RecordingSink()
        self.destination = PipelineDestination(settings(**overrides), out, pipeline=pipeline or FakePipeline(),
                                               sinks=[self.sink])
        self.gateway = Gateway(self.destination, ae_title=AE_TITLE)
        self.port = self.gateway.start(0, host="127.0.0.1")

    def store(self, ds: pydicom.Dataset) -> pydicom.Dataset:
        ae = AE(ae_title=CALLING)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", self.port, ae_title=AE_TITLE)
        assert assoc.is_established
        try:
            return assoc.send_c_store(ds)
        finally:
            assoc.release()

    def close(self) -> None:
        self.gateway.stop()
        self.destination.close()


def until(condition, timeout_s: float = 30.0) -> None:
    """Bounded polling of the pipeline thread's progress."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_acknowledged_instances_survive_a_restart_in_the_spool(tmp_path, exam):
    first = Running(tmp_path)
    for path in exam[:3]:
        assert first.store(pydicom.dcmread(path)).Status == 0x0000
    first.close()  # a SIGKILL leaves the same spool: every 0x0000 came after an fsync
    assert len(list((tmp_path / "spool").glob("*.dcm"))) == 3
    second = Running(tmp_path)
    try:
        assert second.store(pydicom.dcmread(exam[3])).Status == 0x0000
        until(lambda: second.sink.published)
    finally:
        second.close()
    (study,) = second.sink.published
    assert len(study.datasets) == 4 and not study.incomplete
    assert list((tmp_path / "spool").glob("*")) == [], "published instances leave the spool"


def test_a_study_waits_out_a_long_backend_outage_instead_of_being_dropped(tmp_path, exam):
    running = Running(tmp_path, pipeline=FakePipeline(*[BackendUnavailable("down", retry_after=0)] * 8))
    try:
        for path in exam:
            assert running.store(pydicom.dcmread(path)).Status == 0x0000
        until(lambda: running.sink.published)
    finally:
        running.close()
    assert len(running.sink.published) == 1


def test_a_ct_slice_without_geometry_is_answered_cannot_understand_every_time(tmp_path):
    running = Running(tmp_path)
    try:
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        del ds.ImageOrientationPatient
        statuses = [running.store(ds) for _ in range(2)]
    finally:
        running.close()
    assert [s.Status for s in statuses] == [0xC000, 0xC000]
    assert "ImageOrientation" in statuses[0].ErrorComment  # LO: cut at 64 characters
    assert list((tmp_path / "spool").glob("*")) == []
    assert "ImageOrientationPatient" in (tmp_path / "rejected.jsonl").read_text()


def test_an_unwritable_rejection_log_is_refused_not_acknowledged_and_the_pipeline_survives(tmp_path, exam):
    failing = FakePipeline(StudyFailed("processing_failed", "odd geometry", "x"))
    running = Running(tmp_path, pipeline=failing, retry_max_s=0.2)
    log_path = tmp_path / "rejected.jsonl"
    try:
        log_path.unlink(missing_ok=True)
        log_path.mkdir()  # the log cannot be appended to any more
        bad = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        del bad.ImageOrientationPatient
        assert running.store(bad).Status == 0xA700, "a refusal nobody could record must not be final"
        for path in exam:
            assert running.store(pydicom.dcmread(path)).Status == 0x0000
        until(lambda: running.destination.lifecycle.paused)  # the failed study cannot be dead-lettered
        refused = running.store(pydicom.dcmread(exam[0]))
        assert refused.Status == 0xA700 and "rejection log" in refused.ErrorComment
        assert running.destination._worker.is_alive()
        log_path.rmdir()  # writable again: the paused dead-letter goes through, the gateway accepts again
        until(lambda: not running.destination.lifecycle.paused)
        other = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        assert running.store(other).Status == 0x0000
    finally:
        running.close()
    lines = log_path.read_text().splitlines()
    assert sum('"processing_failed"' in line for line in lines) == 4, "every instance of the failed study"
    assert len(list((tmp_path / "rejected").glob("*.dcm"))) == 4, "its instances are kept beside the log"


def test_an_instance_that_cannot_be_spooled_is_answered_out_of_resources(tmp_path, exam):
    running = Running(tmp_path)
    try:
        (tmp_path / "spool").rmdir()
        (tmp_path / "spool").write_text("not a directory")  # as good as a full disk for the spool
        status = running.store(pydicom.dcmread(exam[0]))
    finally:
        running.close()
    assert status.Status == 0xA700 and "cannot spool" in status.ErrorComment


def _secondary_capture(path: Path) -> pydicom.Dataset:
    """A view re-labelled as a Secondary Capture: what modalities send along with a study's images."""
    from pydicom.uid import SecondaryCaptureImageStorage

    from oncostream.uids import derive_uid

    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = derive_uid(ds.SOPInstanceUID, "sc")
    return ds


def test_an_object_no_pipeline_reads_is_acknowledged_and_ignored(tmp_path, exam):
    running = Running(tmp_path)
    try:
        assert running.store(_secondary_capture(exam[0])).Status == 0x0000
        for path in exam:
            assert running.store(pydicom.dcmread(path)).Status == 0x0000
        until(lambda: running.sink.published)
    finally:
        running.close()
    (study,) = running.sink.published
    assert len(study.datasets) == 4, "the exam is read without it"
    assert not (tmp_path / "rejected.jsonl").exists(), "not a dead letter"


def test_the_embedded_gateway_delivers_where_run_and_the_worker_do(tmp_path, exam):
    """Without sinks given, the gateway writes files and the configured deliveries: here the results
    store (always configured; the autouse fixture points it at a fresh SQLite file), with the real
    embedded models."""
    import os

    from oncostream.store import open_store

    destination = PipelineDestination(settings(assembly_timeout_s=0.5), tmp_path)
    gateway = Gateway(destination, ae_title=AE_TITLE)
    port = gateway.start(0, host="127.0.0.1")
    try:
        ae = AE(ae_title=CALLING)
        for path in exam:
            ds = pydicom.dcmread(path)
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
        assert assoc.is_established
        try:
            for path in exam:
                assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        finally:
            assoc.release()
        triage = tmp_path / "triage.jsonl"
        until(lambda: triage.exists() and triage.read_text().strip(), timeout_s=120.0)
    finally:
        gateway.stop()
        destination.close()
    store = open_store(os.environ["ONCOSTREAM_STORE_URL"])
    try:
        (row,) = store.worklist()
    finally:
        store.close()
    assert row.event.study_instance_uid == str(pydicom.dcmread(exam[0]).StudyInstanceUID)
    assert {o.kind for o in row.outputs} >= {"SR"}, "the outputs the file sink wrote are recorded"
