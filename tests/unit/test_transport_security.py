"""Transport security settings: what Kafka clients get, where credentials may travel, and the settings
that must go together."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from oncostream.errors import InsecureTransport
from oncostream.settings import Settings
from oncostream.transport_security import (
    dicom_server_tls,
    is_loopback_host,
    kafka_client_security,
    refuse_credentials_in_clear,
)
from postprocess.stow_sink import StowRsSink

LOOPBACK = {"localhost": True, "127.0.0.1": True, "127.8.9.10": True, "::1": True, "[::1]": True,
            "10.0.0.1": False, "0.0.0.0": False, "pacs.example.org": False, "localhost.example.org": False,
            "": False, None: False}


@pytest.mark.parametrize(("host", "loopback"), LOOPBACK.items(), ids=[repr(h) for h in LOOPBACK])
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("url", ["https://pacs.example.org/dicom-web", "http://127.0.0.1:8042/dicom-web",
                                 "http://localhost/dicom-web", "http://[::1]:8042/dicom-web"])
def test_credentials_may_go_over_https_or_to_loopback(url):
    refuse_credentials_in_clear(url, "root_url")


@pytest.mark.parametrize("url", ["http://pacs.example.org/dicom-web", "http://10.1.2.3:8042/dicom-web",
                                 "http://127.0.0.1.example.org/dicom-web", "ftp://127.0.0.1/x"])
def test_credentials_are_refused_in_clear_elsewhere(url):
    with pytest.raises(InsecureTransport) as refused:
        refuse_credentials_in_clear(url, "root_url")
    assert refused.value.argument == "root_url" and "root_url" in str(refused.value)


def test_stow_refuses_credentials_over_plain_http_at_construction():
    with pytest.raises(InsecureTransport, match="root_url") as refused:
        StowRsSink("http://pacs.example.org/dicom-web", username="reader", password="s3cret")
    assert isinstance(refused.value, ValueError)  # a breach of the argument's contract, as STYLE.md asks
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("url", ["https://pacs.example.org/dicom-web", "http://127.0.0.1:8042/dicom-web"])
def test_stow_accepts_credentials_over_https_or_loopback(url):
    assert StowRsSink(url, username="reader", password="s3cret")._session.auth == ("reader", "s3cret")


def test_stow_without_credentials_may_use_plain_http():
    StowRsSink("http://pacs.example.org/dicom-web")


def test_plaintext_kafka_gets_no_security_options():
    assert kafka_client_security(Settings()) == {}


def test_mutual_tls_options(tmp_path):
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "ca.pem",
                        kafka_ssl_certfile=tmp_path / "client.pem", kafka_ssl_keyfile=tmp_path / "client.key")
    assert kafka_client_security(settings) == {
        "security_protocol": "SSL", "ssl_check_hostname": True, "ssl_cafile": str(tmp_path / "ca.pem"),
        "ssl_certfile": str(tmp_path / "client.pem"), "ssl_keyfile": str(tmp_path / "client.key")}


def test_sasl_ssl_options_and_the_password_stays_masked(tmp_path):
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=tmp_path / "ca.pem",
                        kafka_sasl_username="worker", kafka_sasl_password="s3cret")
    options = kafka_client_security(settings)
    assert (options["security_protocol"], options["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("worker", "s3cret")
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


def test_kafka_security_settings_read_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ONCOSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ONCOSTREAM_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("ONCOSTREAM_KAFKA_SASL_USERNAME", "worker")
    monkeypatch.setenv("ONCOSTREAM_KAFKA_SASL_PASSWORD", "s3cret")
    settings = Settings()
    assert settings.kafka_sasl_password.get_secret_value() == "s3cret"
    assert kafka_client_security(settings)["sasl_mechanism"] == "PLAIN"


@pytest.mark.parametrize(("settings", "names"), [
    ({"kafka_security_protocol": "SASL_SSL"}, "kafka_sasl_username"),
    ({"kafka_sasl_username": "worker", "kafka_sasl_password": "s3cret"}, "kafka_security_protocol"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "client.pem"}, "kafka_ssl_keyfile"),
    ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
    ({"dicom_tls_certfile": "server.pem"}, "dicom_tls_keyfile"),
    ({"dicom_tls_require_client_cert": True}, "dicom_tls_cafile"),
    ({"claim_check_s3_access_key_id": "key"}, "claim_check_s3_secret_access_key"),
], ids=["sasl-without-credentials", "sasl-credentials-in-clear", "certificate-without-key", "unknown-protocol",
        "dicom-certificate-without-key", "client-certificates-without-ca", "s3-half-credentials"])
def test_settings_that_go_together(settings, names):
    with pytest.raises(ValidationError, match=names):
        Settings(**settings)


def test_no_dicom_tls_unless_configured():
    assert dicom_server_tls(Settings()) is None


def test_dicom_tls_context_requires_client_certificates_when_asked(test_pki):
    settings = Settings(dicom_tls_certfile=test_pki.server_cert, dicom_tls_keyfile=test_pki.server_key,
                        dicom_tls_cafile=test_pki.ca_cert, dicom_tls_require_client_cert=True)
    context = dicom_server_tls(settings)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    optional = dicom_server_tls(settings.model_copy(update={"dicom_tls_require_client_cert": False}))
    assert optional.verify_mode == ssl.CERT_NONE
