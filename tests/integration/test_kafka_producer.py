"""Producer, claim check, source and dead-letter topic against the real broker (no pipeline needed)."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from ingest.kafka_source import ClaimCheckResolver, KafkaDeadLetter, KafkaSource, instance_bytes
from oncostream.claim_store import DirectoryClaimStore
from oncostream.contracts import CONTENT_TYPE_CLAIM_CHECK, CONTENT_TYPE_DICOM, ClaimCheck
from oncostream.errors import RejectedInstance
from oncostream.streaming import make_producer, produce_files, study_key

pytestmark = pytest.mark.integration

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # 39 kB, real CT from pydicom's own test files
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))  # 10 kB


def _poll_all(source: KafkaSource, expected: int, timeout_s: float = 60.0) -> list:
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(source.poll(timeout_s=0.5))
    return got


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CT_SMALL, folder / "a_ct.dcm")
    shutil.copy(MR_SMALL, folder / "b_mr.dcm")
    (folder / "c_junk.dcm").write_bytes(b"not a DICOM file at all" * 10)
    return folder


def test_produce_inline_and_claim_check_round_trip(kafka_topics, corpus, tmp_path):
    # CT_small (39 kB) is above a 20 kB inline limit: it travels by claim check; MR_small inline
    settings = kafka_topics.settings(inline_limit_bytes=20_000, claim_check_dir=tmp_path / "claims")
    files = sorted(corpus.iterdir())
    report = produce_files(files, settings, kafka_topics.bootstrap, program="screening-north")
    assert (report.instances, report.studies, report.claim_checks) == (3, 2, 1)
    assert report.bytes == sum(f.stat().st_size for f in files)

    source = KafkaSource(kafka_topics.bootstrap, kafka_topics.dicom, kafka_topics.group)
    try:
        messages = _poll_all(source, 3)
    finally:
        source.close()
    assert len(messages) == 3
    by_key = {m.key: m for m in messages}
    resolver = ClaimCheckResolver(settings.max_instance_bytes, DirectoryClaimStore(settings.claim_check_dir))

    ct = by_key[study_key(CT_SMALL.read_bytes()).encode()]
    assert ct.headers["content-type"] == CONTENT_TYPE_CLAIM_CHECK
    claim = ClaimCheck.model_validate_json(ct.data)
    assert claim.uri.startswith("file://") and claim.size == CT_SMALL.stat().st_size
    assert instance_bytes(ct, resolver) == CT_SMALL.read_bytes()

    mr = by_key[study_key(MR_SMALL.read_bytes()).encode()]
    assert mr.headers["content-type"] == CONTENT_TYPE_DICOM
    assert instance_bytes(mr, resolver) == MR_SMALL.read_bytes()

    junk = by_key[None]  # unreadable header: sent unkeyed, the worker dead-letters it
    for message in messages:
        assert message.headers["program"] == "screening-north"
        assert len(message.headers["trace-id"]) == 32
    assert junk.data == (corpus / "c_junk.dcm").read_bytes()


def test_dead_letter_keeps_bytes_and_says_why(kafka_topics, corpus):
    settings = kafka_topics.settings()
    junk = corpus / "c_junk.dcm"
    produce_files([junk], settings, kafka_topics.bootstrap)
    source = KafkaSource(kafka_topics.bootstrap, kafka_topics.dicom, kafka_topics.group)
    producer = make_producer(kafka_topics.bootstrap, client_id="test-dlq")
    try:
        [message] = _poll_all(source, 1)
        dlq = KafkaDeadLetter(producer, kafka_topics.dlq)
        dlq.add(message, RejectedInstance("not_dicom", "no DICM prefix"))
        dlq.flush(timeout_s=30)
    finally:
        producer.close()
        source.close()

    reader = KafkaSource(kafka_topics.bootstrap, kafka_topics.dlq, kafka_topics.group + "-reader")
    try:
        [record] = _poll_all(reader, 1)
    finally:
        reader.close()
    assert record.data == junk.read_bytes()
    assert hashlib.sha256(record.data).hexdigest() == hashlib.sha256(junk.read_bytes()).hexdigest()
    assert record.headers["reason"] == "not_dicom"
    assert record.headers["detail"] == "no DICM prefix"
    assert record.headers["source-topic"] == kafka_topics.dicom
    assert (record.headers["source-partition"], record.headers["source-offset"]) == (
        str(message.partition), str(message.offset))
    assert record.headers["trace-id"] == message.headers["trace-id"]
