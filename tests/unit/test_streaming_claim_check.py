"""Claim checks without a broker: content-addressed storage, verified resolution, typed rejections."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from ingest.kafka_source import ClaimCheckResolver, KafkaMessage, instance_bytes
from oncostream.claim_store import DirectoryClaimStore
from oncostream.contracts import CONTENT_TYPE_CLAIM_CHECK, CONTENT_TYPE_DICOM, ClaimCheck
from oncostream.errors import RejectedInstance
from oncostream.streaming import study_key, write_claim_check

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


def _resolver(store_dir: Path) -> ClaimCheckResolver:
    return ClaimCheckResolver(max_bytes=1 << 20, store=DirectoryClaimStore(store_dir))


def _claim_message(claim: ClaimCheck) -> KafkaMessage:
    return KafkaMessage(data=claim.model_dump_json().encode(), origin="t/0/0",
                        headers={"content-type": CONTENT_TYPE_CLAIM_CHECK})


def test_claim_check_round_trip_is_content_addressed(tmp_path):
    data = CT_SMALL.read_bytes()
    first = write_claim_check(data, tmp_path)
    second = write_claim_check(data, tmp_path)
    assert first == second
    assert first.uri == (tmp_path / f"{first.sha256}.dcm").resolve().as_uri()
    assert [p.name for p in tmp_path.iterdir()] == [f"{first.sha256}.dcm"]
    assert instance_bytes(_claim_message(first), _resolver(tmp_path)) == data


@pytest.mark.parametrize(("tamper", "reason"), [
    pytest.param(lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 1])),
                 "claim_check_mismatch", id="altered-object"),
    pytest.param(lambda p: p.write_bytes(p.read_bytes()[:-10]), "claim_check_mismatch", id="shortened-object"),
    pytest.param(lambda p: p.unlink(), "claim_check_unresolvable", id="missing-object"),
])
def test_broken_claim_check_is_rejected(tmp_path, tamper, reason):
    claim = write_claim_check(CT_SMALL.read_bytes(), tmp_path)
    tamper(Path(claim.uri.removeprefix("file://")))
    with pytest.raises(RejectedInstance) as err:
        instance_bytes(_claim_message(claim), _resolver(tmp_path))
    assert err.value.reason == reason


@pytest.mark.parametrize(("message", "reason"), [
    pytest.param(KafkaMessage(data=b"{not json", origin="t/0/1", headers={"content-type": CONTENT_TYPE_CLAIM_CHECK}),
                 "claim_check_invalid", id="not-a-claim-check"),
    pytest.param(_claim_message(ClaimCheck(uri="s3://bucket/x.dcm", sha256="0" * 64, size=10)),
                 "claim_check_unresolvable", id="unknown-scheme"),
    pytest.param(_claim_message(ClaimCheck(uri="file:///x.dcm", sha256="0" * 64, size=1 << 30)),
                 "oversize", id="claim-above-instance-limit"),
    pytest.param(KafkaMessage(data=b"x", origin="t/0/2", headers={"content-type": "text/plain"}),
                 "unsupported_content_type", id="other-content-type"),
])
def test_unusable_values_are_rejected_with_a_reason(tmp_path, message, reason):
    with pytest.raises(RejectedInstance) as err:
        instance_bytes(message, _resolver(tmp_path))
    assert err.value.reason == reason


def test_registered_scheme_resolver_is_used(tmp_path):
    data = CT_SMALL.read_bytes()
    claim = write_claim_check(data, tmp_path)
    remote = ClaimCheck(uri="https://pacs.example/wado/instances/1", sha256=claim.sha256, size=claim.size)
    resolver = _resolver(tmp_path)
    resolver.register("https", lambda uri: data)
    assert instance_bytes(_claim_message(remote), resolver) == data


def test_inline_value_is_the_instance(tmp_path):
    data = CT_SMALL.read_bytes()
    message = KafkaMessage(data=data, origin="t/0/3", headers={"content-type": CONTENT_TYPE_DICOM})
    assert instance_bytes(message, _resolver(tmp_path)) is data


def test_study_key_reads_the_study_uid_or_gives_none():
    assert study_key(CT_SMALL.read_bytes()) == "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    assert study_key(b"definitely not DICOM") is None
