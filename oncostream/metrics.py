"""Prometheus metrics of a worker or run. Labels never carry identifiers (no PHI, bounded cardinality).

Observers cannot break processing (STYLE.md rule 7): every recording helper swallows and logs its own
failure.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

STUDIES = Counter("oncostream_studies_total", "Studies finished, by outcome",
                  ["modality", "outcome"])  # outcome: triaged | incomplete | failed
INSTANCES = Counter("oncostream_instances_total", "DICOM instances received")
INSTANCE_BYTES = Counter("oncostream_instance_bytes_total", "Bytes of DICOM instances received")
GATEWAY_STORES = Counter("oncostream_gateway_stores_total", "C-STORE requests the gateway answered, by status",
                         ["status"])  # status: success | rejected | cannot_encode | failed
DLQ = Counter("oncostream_dlq_total", "Instances rejected to the dead-letter sink, by reason", ["reason"])
STUDY_LATENCY = Histogram("oncostream_study_latency_seconds",
                          "Arrival of the first instance to triage event published", ["modality"],
                          buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
INFERENCE_SECONDS = Histogram("oncostream_inference_seconds", "Backend inference time per study",
                              ["model"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120))
IN_FLIGHT = Gauge("oncostream_in_flight_studies", "Studies being assembled or processed")
PRIORITY = Counter("oncostream_triage_priority_total", "Triage events by priority", ["modality", "priority"])


def serve(port: int, host: str | None = None) -> int:
    """Start the /metrics endpoint; port 0 picks a free one. Returns the bound port.

    ``host`` defaults to settings ``metrics_host`` (loopback): exposing every interface is a choice a
    deployment makes (ONCOSTREAM_METRICS_HOST=0.0.0.0 where Prometheus scrapes the pod address)."""
    if host is None:
        from oncostream.settings import Settings

        host = Settings().metrics_host
    server, _thread = start_http_server(port, addr=host)
    return server.server_port


def record(action, *args) -> None:
    """Call a metric action, never letting a metrics failure reach the pipeline."""
    try:
        action(*args)
    except Exception:  # noqa: BLE001 - observers must not break processing
        log.exception("metrics update failed")


@contextmanager
def timed(histogram: Histogram, **labels):
    try:
        timer = histogram.labels(**labels).time() if labels else histogram.time()
    except Exception:  # noqa: BLE001
        log.exception("metrics timer failed")
        yield
        return
    with timer:
        yield
