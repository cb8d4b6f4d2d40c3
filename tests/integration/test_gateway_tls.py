"""DICOM TLS on the gateway (PS3.15 B.1), fed by DCMTK's `storescu --enable-tls` (built with OpenSSL 3
on Debian), with a CA and certificates made for the run: TLS callers store, callers that do not
speak TLS or bring no trusted certificate get no association, and the CLI takes its TLS from settings."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from ingest.gateway import Destination, Gateway
from oncostream.settings import Settings
from oncostream.transport_security import dicom_server_tls
from tests.fixtures.kafka import read_topic
from tests.integration.test_gateway import AE_TITLE, ALLOWED, GatewayProcess

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("storescu") is None,
                                 reason="DCMTK storescu is not installed (scripts/install_system_deps.sh)")]

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


class _Recorded(Destination):
    def __init__(self):
        self.delivered: list[bytes] = []

    def deliver(self, data: bytes, calling_ae: str) -> None:
        self.delivered.append(data)


def _sop_instance_uid(data: bytes) -> str:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID


def _tls_settings(pki, require_client_cert: bool) -> Settings:
    return Settings(dicom_tls_certfile=pki.server_cert, dicom_tls_keyfile=pki.server_key,
                    dicom_tls_cafile=pki.ca_cert, dicom_tls_require_client_cert=require_client_cert)


def _storescu(port: int, tls: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", *tls, "-aet", ALLOWED, "-aec", AE_TITLE, "127.0.0.1", str(port),
                           str(CT_SMALL)], capture_output=True, text=True, timeout=60)


def _with_certificate(pki) -> list[str]:
    return ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca_cert)]


def _anonymous(pki) -> list[str]:
    return ["+tla", "+cf", str(pki.ca_cert)]


@pytest.fixture
def tls_gateway(test_pki, request):
    """An in-process gateway over TLS; ``request.param`` says whether client certificates are required."""
    destination = _Recorded()
    gateway = Gateway(destination, ae_title=AE_TITLE, allow=[ALLOWED], max_instance_bytes=1 << 24)
    port = gateway.start(0, ssl_context=dicom_server_tls(_tls_settings(test_pki, request.param)))
    try:
        yield port, destination
    finally:
        gateway.stop()


@pytest.mark.parametrize("tls_gateway", [True], indirect=True, ids=["client-certificates-required"])
def test_storescu_with_a_client_certificate_stores_over_tls(tls_gateway, test_pki):
    port, destination = tls_gateway
    sent = _storescu(port, _with_certificate(test_pki))
    assert sent.returncode == 0, sent.stderr
    [data] = destination.delivered
    assert _sop_instance_uid(data) == pydicom.dcmread(CT_SMALL).SOPInstanceUID


@pytest.mark.parametrize("tls_gateway", [True], indirect=True, ids=["client-certificates-required"])
@pytest.mark.parametrize("client", ["plain-tcp", "tls-without-certificate", "certificate-from-another-ca"])
def test_callers_without_tls_or_a_trusted_certificate_get_no_association(tls_gateway, test_pki, tmp_path, client):
    port, destination = tls_gateway
    if client == "plain-tcp":
        tls = []
    elif client == "tls-without-certificate":
        tls = _anonymous(test_pki)
    else:
        from tests.fixtures.tls import make_test_pki

        stranger = make_test_pki(tmp_path / "stranger")  # a CA the gateway has never heard of
        tls = ["+tls", str(stranger.client_key), str(stranger.client_cert), "+cf", str(test_pki.ca_cert)]
    started = time.monotonic()
    refused = _storescu(port, tls)
    assert refused.returncode != 0
    assert time.monotonic() - started < 45
    assert destination.delivered == []


@pytest.mark.parametrize("tls_gateway", [False], indirect=True, ids=["client-certificates-optional"])
def test_tls_without_a_client_certificate_when_none_is_required(tls_gateway, test_pki):
    port, destination = tls_gateway
    sent = _storescu(port, _anonymous(test_pki))
    assert sent.returncode == 0, sent.stderr
    assert len(destination.delivered) == 1
    # storescu checks the gateway's certificate: without our CA it refuses to talk
    assert _storescu(port, ["+tla"]).returncode != 0
    assert len(destination.delivered) == 1


def test_the_gateway_command_takes_dicom_tls_from_settings(kafka_topics, test_pki, tmp_path):
    env = kafka_topics.env(ONCOSTREAM_DICOM_TLS_CERTFILE=str(test_pki.server_cert),
                           ONCOSTREAM_DICOM_TLS_KEYFILE=str(test_pki.server_key),
                           ONCOSTREAM_DICOM_TLS_CAFILE=str(test_pki.ca_cert),
                           ONCOSTREAM_DICOM_TLS_REQUIRE_CLIENT_CERT="true")
    gateway = GatewayProcess(["--bootstrap", kafka_topics.bootstrap, "--allow", ALLOWED], env=env,
                             log_path=tmp_path / "gateway.log")
    try:
        assert _storescu(gateway.port, []).returncode != 0
        sent = _storescu(gateway.port, _with_certificate(test_pki))
        assert sent.returncode == 0, sent.stderr
    finally:
        assert gateway.stop() == 0
    [record] = read_topic(kafka_topics.bootstrap, kafka_topics.dicom)
    assert _sop_instance_uid(record.value) == pydicom.dcmread(CT_SMALL).SOPInstanceUID
