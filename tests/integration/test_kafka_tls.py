"""Kafka over TLS against the real broker: mutual TLS and SASL_SSL (PLAIN, SCRAM-SHA-512) listeners on
loopback, with a CA and certificates made for this run; clients that cannot be trusted fail and say why."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from ingest.kafka_source import KafkaSource
from oncostream.errors import KafkaUnreachable
from oncostream.settings import Settings
from oncostream.streaming import make_producer, produce_files

pytestmark = pytest.mark.integration

MR_SMALL = Path(get_testdata_file("MR_small.dcm"))  # 10 kB, inline
USER = "oncostream"
PASSWORD = secrets.token_hex(12)
# a client that cannot connect gives up after this instead of kafka-python's 30 s
BOOTSTRAP_TIMEOUT_MS = 4000


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory, test_pki) -> Iterator[dict[str, str]]:
    """A broker with an SSL listener that requires a client certificate and a SASL_SSL listener."""
    from oncostream.services import kafka

    tls = kafka.BrokerTls(keystore=test_pki.server_keystore, truststore=test_pki.ca_cert,
                          require_client_cert=True, users={USER: PASSWORD})
    service = kafka.start(Path(tmp_path_factory.mktemp("kafka-tls")), tls=tls)
    try:
        yield service.env
    finally:
        service.stop()


def _settings(test_pki, case: str, **overrides) -> Settings:
    topics = dict(topic_dicom=f"tls-{uuid.uuid4().hex[:8]}.dicom", consumer_group=f"tls-{uuid.uuid4().hex[:8]}")
    if case == "mtls":
        security = dict(kafka_security_protocol="SSL", kafka_ssl_cafile=test_pki.ca_cert,
                        kafka_ssl_certfile=test_pki.client_cert, kafka_ssl_keyfile=test_pki.client_key)
    else:
        security = dict(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=test_pki.ca_cert,
                        kafka_sasl_mechanism="PLAIN" if case == "sasl-plain" else "SCRAM-SHA-512",
                        kafka_sasl_username=USER, kafka_sasl_password=PASSWORD)
    return Settings(**{**topics, **security, **overrides})


def _bootstrap(secure_broker, settings: Settings) -> str:
    return secure_broker["KAFKA_SSL_BOOTSTRAP" if settings.kafka_security_protocol == "SSL"
                         else "KAFKA_SASL_SSL_BOOTSTRAP"]


@pytest.mark.parametrize("case", ["mtls", "sasl-plain", "sasl-scram"])
def test_produce_and_consume_over_tls(secure_broker, test_pki, case):
    from oncostream.services.kafka import create_topics

    settings = _settings(test_pki, case)
    create_topics(secure_broker["KAFKA_BOOTSTRAP"], {settings.topic_dicom: 1})
    bootstrap = _bootstrap(secure_broker, settings)
    report = produce_files([MR_SMALL], settings, bootstrap)
    assert report.instances == 1
    source = KafkaSource(bootstrap, settings.topic_dicom, settings.consumer_group, settings=settings)
    try:
        deadline, messages = time.monotonic() + 60, []
        while not messages and time.monotonic() < deadline:
            messages = source.poll(timeout_s=0.5)
        source.commit({(settings.topic_dicom, 0): messages[0].offset + 1})
    finally:
        source.close()
    assert [m.data for m in messages] == [MR_SMALL.read_bytes()]


@pytest.mark.parametrize(("case", "overrides", "says"), [
    # without kafka_ssl_cafile the system CAs apply, and none of them signed the broker's certificate
    ("mtls", {"kafka_ssl_cafile": None}, ["kafka_ssl_cafile", "unable to get local issuer certificate"]),
    ("sasl-scram", {"kafka_ssl_cafile": None}, ["kafka_ssl_cafile", "unable to get local issuer certificate"]),
    ("mtls", {"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None}, ["kafka_ssl_certfile", "CERTIFICATE"]),
    ("sasl-scram", {"kafka_sasl_password": "wrong"}, ["kafka_sasl_password"]),
], ids=["no-ca-ssl", "no-ca-sasl-ssl", "no-client-certificate", "wrong-sasl-password"])
def test_a_client_that_cannot_be_trusted_fails_and_says_why(secure_broker, test_pki, case, overrides, says):
    settings = _settings(test_pki, case, **overrides)
    started = time.monotonic()
    with pytest.raises(KafkaUnreachable) as failed:
        make_producer(_bootstrap(secure_broker, settings), client_id="untrusted", settings=settings,
                      bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
    assert time.monotonic() - started < BOOTSTRAP_TIMEOUT_MS / 1000 + 15
    message = str(failed.value)
    assert failed.value.security_protocol == settings.kafka_security_protocol
    for fragment in says:
        assert fragment in message
    assert PASSWORD not in message and "wrong" not in message
