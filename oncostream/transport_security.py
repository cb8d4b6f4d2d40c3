"""Transport security in one place: what Kafka clients, the DICOM listener and HTTP clients are given.

Every Kafka client oncostream builds (``oncostream.streaming.make_producer``, ``ingest.kafka_source.
KafkaSource``) takes its security options from ``kafka_client_security``; the gateway's DICOM listener
its TLS context from ``dicom_server_tls``; anything that sends credentials over HTTP checks its URL with
``refuse_credentials_in_clear``.
"""

from __future__ import annotations

import ipaddress
import ssl
from typing import Any
from urllib.parse import urlparse

from oncostream.errors import InsecureTransport
from oncostream.settings import Settings


def is_loopback_host(host: str | None) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): traffic that never leaves the machine."""
    if not host:
        return False
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refuse_credentials_in_clear(url: str, argument: str) -> None:
    """InsecureTransport naming ``argument`` when credentials would go to ``url`` over plain http to a
    host other than loopback."""
    parsed = urlparse(url)
    if parsed.scheme == "https":
        return
    if parsed.scheme == "http" and is_loopback_host(parsed.hostname):
        return
    raise InsecureTransport(argument, f"credentials are sent only over https (or plain http to loopback), "
                                      f"not to {parsed.scheme}://{parsed.hostname}")


def kafka_client_security(settings: Settings) -> dict[str, Any]:
    """kafka-python keyword arguments for ``settings.kafka_security_protocol``: TLS trust and client
    certificate for SSL and SASL_SSL, SASL mechanism and credentials for SASL_SSL; {} for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    config: dict[str, Any] = {"security_protocol": protocol, "ssl_check_hostname": True}
    if settings.kafka_ssl_cafile is not None:
        config["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile is not None:
        config["ssl_certfile"] = str(settings.kafka_ssl_certfile)
        config["ssl_keyfile"] = str(settings.kafka_ssl_keyfile)
        if settings.kafka_ssl_key_password is not None:
            config["ssl_password"] = settings.kafka_ssl_key_password.get_secret_value()
    if protocol == "SASL_SSL":
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return config


def dicom_server_tls(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the gateway's DICOM listener (PS3.15 B.1, TLS 1.2 or later), or None when
    ``dicom_tls_certfile`` is unset. With ``dicom_tls_require_client_cert`` only callers whose certificate
    chains to ``dicom_tls_cafile`` get an association."""
    if settings.dicom_tls_certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.dicom_tls_certfile), str(settings.dicom_tls_keyfile))
    if settings.dicom_tls_cafile is not None:
        context.load_verify_locations(cafile=str(settings.dicom_tls_cafile))
    context.verify_mode = ssl.CERT_REQUIRED if settings.dicom_tls_require_client_cert else ssl.CERT_NONE
    return context
