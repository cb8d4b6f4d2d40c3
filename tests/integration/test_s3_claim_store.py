"""The S3 claim store against a real S3-compatible server (S3Proxy, started by the suite): the same
guarantees as the directory store, checked on the requests the server actually receives."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from ingest.kafka_source import ClaimCheckResolver, KafkaSource, instance_bytes
from oncostream.claim_store import S3ClaimStore, claim_store_from_settings
from oncostream.contracts import CONTENT_TYPE_CLAIM_CHECK, ClaimCheck
from oncostream.errors import ClaimStoreUnavailable, InsecureTransport, RejectedInstance
from oncostream.services.base import free_port
from oncostream.settings import Settings
from oncostream.streaming import produce_files

pytestmark = pytest.mark.integration

DATA = b"DICM-like bytes " * 4096  # 64 KiB
DIGEST = hashlib.sha256(DATA).hexdigest()
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


def _store(s3_server, bucket: str, prefix: str = "claims/north", **kwargs) -> S3ClaimStore:
    return S3ClaimStore(f"s3://{bucket}/{prefix}", endpoint_url=s3_server.endpoint_url,
                        access_key_id=s3_server.access_key_id, secret_access_key=s3_server.secret_access_key,
                        **kwargs)


def _requests(store: S3ClaimStore) -> list[tuple[str, dict]]:
    """Every S3 operation the store sends from now on, with its parameters."""
    seen: list[tuple[str, dict]] = []
    store._client.meta.events.register("before-call.s3.*",
                                       lambda model, params, **_: seen.append((model.name, params)))
    return seen


def _claim(uri: str, data: bytes = DATA) -> ClaimCheck:
    return ClaimCheck(uri=uri, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def test_write_read_round_trip_is_content_addressed(s3_server, s3_bucket):
    store = _store(s3_server, s3_bucket)
    claim = store.write(DATA)
    assert claim.uri == f"s3://{s3_bucket}/claims/north/{DIGEST}.dcm"
    assert (claim.sha256, claim.size) == (DIGEST, len(DATA))
    sent = _requests(store)
    assert store.write(DATA) == claim  # already there: a HEAD, no second upload
    assert [name for name, _ in sent] == ["HeadObject"]
    assert store.read(claim) == DATA
    head, get = sent[1], sent[2]
    assert head[0] == "HeadObject" and get[0] == "GetObject"
    # exactly the declared bytes, only of the version the HEAD measured
    assert get[1]["headers"]["Range"] == f"bytes=0-{len(DATA) - 1}"
    assert get[1]["headers"]["If-Match"]


def _other_bucket(s3_server, s3_bucket) -> str:
    other = f"{s3_bucket}-other"
    client = s3_server.client()
    client.create_bucket(Bucket=other)
    client.put_object(Bucket=other, Key=f"claims/north/{DIGEST}.dcm", Body=DATA)
    return f"s3://{other}/claims/north/{DIGEST}.dcm"


def _outside_prefix(s3_server, s3_bucket) -> str:
    s3_server.client().put_object(Bucket=s3_bucket, Key=f"claims/south/{DIGEST}.dcm", Body=DATA)
    return f"s3://{s3_bucket}/claims/south/{DIGEST}.dcm"


def _nested(s3_server, s3_bucket) -> str:
    s3_server.client().put_object(Bucket=s3_bucket, Key=f"claims/north/deeper/{DIGEST}.dcm", Body=DATA)
    return f"s3://{s3_bucket}/claims/north/deeper/{DIGEST}.dcm"


# each builds (server, bucket) -> a URI that must be refused before any request reaches the server
HOSTILE_URIS = {
    "other-bucket": _other_bucket,
    "outside-prefix": _outside_prefix,
    "nested-under-prefix": _nested,
    "dot-dot": lambda s3, b: f"s3://{b}/claims/north/../south/{DIGEST}.dcm",
    "encoded-slash": lambda s3, b: f"s3://{b}/claims/north/..%2Fsouth%2F{DIGEST}.dcm",
    "userinfo": lambda s3, b: f"s3://user@{b}/claims/north/{DIGEST}.dcm",
    "port": lambda s3, b: f"s3://{b}:9000/claims/north/{DIGEST}.dcm",
    "query": lambda s3, b: f"s3://{b}/claims/north/{DIGEST}.dcm?versionId=1",
    "bucket-root": lambda s3, b: f"s3://{b}/{DIGEST}.dcm",
    "prefix-itself": lambda s3, b: f"s3://{b}/claims/north/",
    "https": lambda s3, b: f"{s3.endpoint_url}/{b}/claims/north/{DIGEST}.dcm",
}


@pytest.mark.parametrize("build", HOSTILE_URIS.values(), ids=HOSTILE_URIS.keys())
def test_only_keys_under_the_bucket_and_prefix_are_requested(s3_server, s3_bucket, build):
    store = _store(s3_server, s3_bucket)
    uri = build(s3_server, s3_bucket)
    sent = _requests(store)
    with pytest.raises(RejectedInstance) as refused:
        store.read(_claim(uri))
    assert refused.value.reason == "claim_check_refused"
    assert sent == []
    assert store.delete(_claim(uri)) is False
    assert sent == []


def test_a_size_that_differs_is_refused_on_the_head_before_any_byte_is_fetched(s3_server, s3_bucket):
    store = _store(s3_server, s3_bucket)
    claim = store.write(DATA)
    sent = _requests(store)
    for size in (len(DATA) - 1, len(DATA) + 1, 1):
        with pytest.raises(RejectedInstance) as refused:
            store.read(claim.model_copy(update={"size": size}))
        assert refused.value.reason == "claim_check_mismatch"
    assert {name for name, _ in sent} == {"HeadObject"}


def test_content_that_differs_from_its_sha256_is_refused(s3_server, s3_bucket):
    store = _store(s3_server, s3_bucket)
    forged = bytes(reversed(DATA))  # same size, other content, under the key of DATA's digest
    s3_server.client().put_object(Bucket=s3_bucket, Key=f"claims/north/{DIGEST}.dcm", Body=forged)
    with pytest.raises(RejectedInstance) as refused:
        store.read(_claim(f"s3://{s3_bucket}/claims/north/{DIGEST}.dcm"))
    assert refused.value.reason == "claim_check_mismatch"


def test_a_missing_object_is_unresolvable(s3_server, s3_bucket):
    store = _store(s3_server, s3_bucket)
    with pytest.raises(RejectedInstance) as refused:
        store.read(_claim(f"s3://{s3_bucket}/claims/north/{DIGEST}.dcm"))
    assert refused.value.reason == "claim_check_unresolvable"


def test_an_empty_object_round_trips(s3_server, s3_bucket):
    store = _store(s3_server, s3_bucket)
    assert store.read(store.write(b"")) == b""


def test_committed_objects_are_deleted_and_old_ones_collected(s3_server, s3_bucket):
    store = _store(s3_server, s3_bucket, max_age_s=3600)
    resolver = ClaimCheckResolver(1 << 20, store=store)
    committed, dead_lettered = store.write(DATA), store.write(b"dead-lettered instance")
    unrelated = f"claims/north/{DIGEST}.txt"
    s3_server.client().put_object(Bucket=s3_bucket, Key=unrelated, Body=b"not a claim")
    assert resolver.resolve(committed, source=("t", 0, 5)) == DATA
    assert resolver.resolve(dead_lettered, source=("t", 0, 6)) == b"dead-lettered instance"
    assert resolver.committed({("t", 0): 7}, published=[("t", 0, 5)]) == 1

    def keys() -> set[str]:
        listed = s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="claims/north/")
        return {entry["Key"] for entry in listed.get("Contents", [])}

    dead_key = dead_lettered.uri.removeprefix(f"s3://{s3_bucket}/")
    assert keys() == {dead_key, unrelated}  # the dead-lettered object stays for its DLQ record
    assert store.collect(now=time.time()) == 0
    assert store.collect(now=time.time() + 2 * 3600) == 1
    assert keys() == {unrelated}  # only content-addressed objects are collected


def test_a_file_claim_is_not_read_by_an_s3_configured_worker(s3_server, s3_bucket):
    resolver = ClaimCheckResolver(1 << 20, store=_store(s3_server, s3_bucket))
    with pytest.raises(RejectedInstance) as refused:
        resolver.resolve(_claim("file:///etc/passwd"))
    assert refused.value.reason == "claim_check_unresolvable"
    with pytest.raises(ValueError, match="s3"):
        resolver.register("s3", lambda uri: b"")


def test_an_unreachable_or_refusing_server_is_unavailable_not_a_verdict(s3_server, s3_bucket):
    down = S3ClaimStore(f"s3://{s3_bucket}/claims", endpoint_url=f"http://127.0.0.1:{free_port()}",
                        access_key_id="a", secret_access_key="b", connect_timeout_s=1, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(ClaimStoreUnavailable):
        down.read(_claim(f"s3://{s3_bucket}/claims/{DIGEST}.dcm"))
    assert time.monotonic() - started < 10
    with pytest.raises(ClaimStoreUnavailable):
        down.write(DATA)
    wrong_key = S3ClaimStore(f"s3://{s3_bucket}/claims", endpoint_url=s3_server.endpoint_url,
                             access_key_id=s3_server.access_key_id, secret_access_key="wrong", max_attempts=1)
    with pytest.raises(ClaimStoreUnavailable):
        wrong_key.write(DATA)


@pytest.mark.parametrize(("kwargs", "error", "argument"), [
    ({"url": "s3://Bad_Bucket/x"}, ValueError, "url"),
    ({"url": "s3://bucket/../x"}, ValueError, "url"),
    ({"url": "s3://bucket/x?y=1"}, ValueError, "url"),
    ({"url": "file:///tmp/claims"}, ValueError, "url"),
    ({"url": "s3://bucket/x", "endpoint_url": "http://s3.example.org", "access_key_id": "a",
      "secret_access_key": "b"}, InsecureTransport, "endpoint_url"),
    ({"url": "s3://bucket/x", "access_key_id": "a"}, ValueError, "secret_access_key"),
], ids=["bucket-name", "dot-dot-prefix", "query", "not-s3", "credentials-over-http", "half-credentials"])
def test_construction_refuses_bad_configuration_by_name(kwargs, error, argument):
    url = kwargs.pop("url")
    with pytest.raises(error, match=argument):
        S3ClaimStore(url, **kwargs)


def test_settings_select_the_s3_store(s3_server):
    store = claim_store_from_settings(Settings(**s3_server.store_settings("s3://bucket-a/claims")))
    assert isinstance(store, S3ClaimStore) and (store.bucket, store.prefix) == ("bucket-a", "claims/")
    assert "secret" not in repr(Settings(**s3_server.store_settings("s3://bucket-a/claims")).claim_check_s3_secret_access_key)


def test_producer_and_worker_share_the_s3_store_through_kafka(kafka_topics, s3_server, s3_bucket):
    # CT_small (39 kB) is above a 20 kB inline limit: the producer puts it in S3, Kafka carries the claim
    settings = kafka_topics.settings(inline_limit_bytes=20_000,
                                     **s3_server.store_settings(f"s3://{s3_bucket}/claims"))
    report = produce_files([CT_SMALL], settings, kafka_topics.bootstrap)
    assert report.claim_checks == 1
    source = KafkaSource(kafka_topics.bootstrap, kafka_topics.dicom, kafka_topics.group, settings=settings)
    try:
        deadline, messages = time.monotonic() + 60, []
        while not messages and time.monotonic() < deadline:
            messages = source.poll(timeout_s=0.5)
    finally:
        source.close()
    [message] = messages
    assert message.headers["content-type"] == CONTENT_TYPE_CLAIM_CHECK
    claim = ClaimCheck.model_validate_json(message.data)
    assert claim.uri.startswith(f"s3://{s3_bucket}/claims/")
    resolver = ClaimCheckResolver(settings.max_instance_bytes, claim_store_from_settings(settings))
    assert instance_bytes(message, resolver) == CT_SMALL.read_bytes()
    source_key = (message.topic, message.partition, message.offset)
    assert resolver.committed({source_key[:2]: message.offset + 1}, published=[source_key]) == 1
    assert s3_server.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def test_a_worker_that_cannot_reach_the_store_stops_without_committing_past_the_instance(
        kafka_topics, s3_server, s3_bucket):
    import threading

    from oncostream.app.worker import Worker

    store = s3_server.store_settings(f"s3://{s3_bucket}/claims")
    producer_settings = kafka_topics.settings(inline_limit_bytes=20_000, **store)
    produce_files([CT_SMALL], producer_settings, kafka_topics.bootstrap)
    # the worker's endpoint is a closed port: every request fails as if the store were down
    worker_settings = kafka_topics.settings(**{**store,
                                               "claim_check_s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    worker = Worker(worker_settings, kafka_topics.bootstrap, kafka_topics.dicom, pipeline=None, sinks=[])
    timer = threading.Timer(90, worker.stop)  # bound: the test fails below rather than hanging
    timer.start()
    try:
        assert worker.run() == 1
    finally:
        timer.cancel()
    assert not worker.stopping  # it ended on the failure, not on the timer
    [record] = kafka_topics.read(kafka_topics.dicom)
    # the committed offset stays at the instance: the group reads it again (before the fix: offset + 1)
    assert kafka_topics.committed()[record.partition] in (None, record.offset)
    assert kafka_topics.read(kafka_topics.dlq) == []  # and not dead-lettered on an outage
    assert s3_server.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 1
