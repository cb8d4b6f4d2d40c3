"""Transport security in one place: what Kafka clients, the DICOM listener and HTTP clients are given.

Every Kafka client oncostream builds (``oncostream.streaming.make_producer``, ``ingest.kafka_source.
KafkaSource``) is made by ``kafka_client``, with its security options from ``kafka_client_security``; the gateway's DICOM listener
its TLS context from ``dicom_server_tls``; anything that sends credentials over HTTP checks its URL with
``refuse_credentials_in_clear``.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from typing import Any
from urllib.parse import urlparse

from oncostream.errors import InsecureTransport, KafkaUnreachable
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


def kafka_client(client_class, bootstrap: str, settings: Settings | None, **config):
    """A kafka-python client (``KafkaProducer``, ``KafkaConsumer``) for ``bootstrap`` with the transport
    security of ``settings`` (None: PLAINTEXT). When it cannot connect, KafkaUnreachable says why
    (kafka-python itself only times out): the TLS handshake is tried once more to name the cause."""
    from kafka import errors

    # kafka-python 3 times out (KafkaTimeoutError); 2.x raised NoBrokersAvailable, gone from 3.x
    cannot_connect = tuple(getattr(errors, name) for name in ("KafkaTimeoutError", "NoBrokersAvailable",
                                                              "KafkaConnectionError") if hasattr(errors, name))
    security = kafka_client_security(settings) if settings is not None else {}
    try:
        return client_class(bootstrap_servers=bootstrap, **{**security, **config})
    except cannot_connect as exc:
        protocol = security.get("security_protocol", "PLAINTEXT")
        cause = _tls_diagnosis(bootstrap, security) if protocol != "PLAINTEXT" else None
        if cause is None:
            cause = f"no broker answered ({type(exc).__name__})"
            if protocol == "SASL_SSL":
                cause += ("; TLS to the broker works, so check kafka_sasl_mechanism, kafka_sasl_username and "
                          "kafka_sasl_password")
        raise KafkaUnreachable(bootstrap, protocol, cause) from exc


def _tls_diagnosis(bootstrap: str, security: dict[str, Any], timeout_s: float = 5.0) -> str | None:
    """Why a TLS connection to the first bootstrap server fails, or None when it works."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    host = host.strip("[]")  # an IPv6 literal
    context = ssl.create_default_context(cafile=security.get("ssl_cafile"))
    if security.get("ssl_certfile"):
        context.load_cert_chain(security["ssl_certfile"], security.get("ssl_keyfile"), security.get("ssl_password"))
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            # a broker sends nothing unasked; a client certificate it refuses (TLS 1.3) arrives as an alert here
            tls.settimeout(1.0)
            try:
                tls.recv(1)
            except TimeoutError:
                return None
            except ssl.SSLError as exc:
                return (f"the broker refused this client's certificate ({exc.reason}): set kafka_ssl_certfile and "
                        "kafka_ssl_keyfile to a certificate signed by a CA the broker trusts")
            return None
    except ssl.SSLCertVerificationError as exc:
        return (f"the broker's certificate could not be verified ({exc.verify_message}): set kafka_ssl_cafile to "
                "the CA that signed it")
    except ssl.SSLError as exc:
        return f"TLS handshake failed ({exc.reason})"
    except OSError as exc:
        return f"cannot open a connection ({type(exc).__name__}: {exc})"


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
