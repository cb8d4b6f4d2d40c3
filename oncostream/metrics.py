"""Prometheus metrics of a worker or run. Labels never carry identifiers (no PHI, bounded cardinality):
modality, program, priority, outcome, stage, model, a normalised manufacturer name (a device attribute,
capped in number), BI-RADS density and a ten-year age band.

Observers cannot break processing (STYLE.md rule 7): every recording helper swallows and logs its own
failure.

Series that alerts compare over time exist from start-up with zero samples (``_initialise``), so an
alert on "no study finished" fires for a worker stuck before its first study too.
"""

from __future__ import annotations

import logging
import platform
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

MODALITIES = ("MG", "CT")
OUTCOMES = ("triaged", "incomplete", "failed")
PRIORITIES = ("URGENT", "HIGH", "ROUTINE", "LOW")
# decode: reading pixels, canonicalising and inferring are one backend call (ingest/), so "inference"
# holds decode + preprocessing + networks; "parse" is the header read and validation of one instance
STAGES = ("parse", "assembly_wait", "inference", "postprocess", "publish")
# the models whose scores are watched for drift, and how a study's score is read from its event
SCORED_MODELS = {"MG": "mammo_screening", "CT": "ldct_screening"}
SCORE_BINS = tuple(str(b) for b in range(1, 11))  # mammography exam score 1-10 = decile of the reference
MAX_MANUFACTURERS = 20  # distinct manufacturer label values per process; later ones are "other"

STUDIES = Counter("oncostream_studies_total", "Studies finished, by outcome",
                  ["modality", "outcome"])  # outcome: triaged | incomplete | failed
INSTANCES = Counter("oncostream_instances_total", "DICOM instances received")
INSTANCE_BYTES = Counter("oncostream_instance_bytes_total", "Bytes of DICOM instances received")
GATEWAY_STORES = Counter("oncostream_gateway_stores_total", "C-STORE requests the gateway answered, by status",
                         ["status"])  # status: success | rejected | cannot_encode | failed
DLQ = Counter("oncostream_dlq_total", "Instances rejected to the dead-letter sink, by reason", ["reason"])
# buckets hold every program's triage_sla_seconds (default 60, 120, 600, 1800 s): the SLO rules
# read the bucket whose le is the objective
STUDY_LATENCY = Histogram("oncostream_study_latency_seconds",
                          "First instance of a study received to its triage event published",
                          ["modality", "program", "priority"],
                          buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600))
INFERENCE_SECONDS = Histogram("oncostream_inference_seconds", "Backend inference time per study",
                              ["model"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120))
STAGE_SECONDS = Histogram("oncostream_stage_seconds", "Time of one study (one instance for parse) in a stage",
                          ["stage", "modality"],
                          buckets=(0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600))
IN_FLIGHT = Gauge("oncostream_in_flight_studies", "Studies being assembled or processed")
PRIORITY = Counter("oncostream_triage_priority_total", "Triage events by priority", ["modality", "priority"])
CONSUMER_LAG = Gauge("oncostream_consumer_lag_records",
                     "Records of an assigned partition not yet fetched (high watermark - position)",
                     ["topic", "partition"])
HEARTBEAT = Gauge("oncostream_loop_heartbeat_timestamp_seconds",
                  "Unix time the worker loop last went round (set from its start)", ["loop"])
BUILD_INFO = Gauge("oncostream_build_info", "Running oncostream release", ["version", "python"])
MODEL_INFO = Gauge("oncostream_model_info", "Model releases a study was triaged with", ["model", "release"])
MODEL_SCORE = Histogram("oncostream_model_score",
                        "Study-level malignancy probability (MG: exam; CT: highest nodule, 0 without one)",
                        ["model", "program", "manufacturer", "density", "age_band"],
                        buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95))
MODEL_SCORE_BIN = Counter("oncostream_model_score_bin_total",
                          "Studies per score bin (MG: exam score 1-10, a decile of the reference population)",
                          ["model", "program", "bin"])
MODEL_SCORE_REFERENCE = Gauge("oncostream_model_score_reference_ratio",
                              "Share of each score bin in the model card's reference population",
                              ["model", "bin"])

_manufacturers: set[str] = set()
_manufacturers_lock = threading.Lock()


def _initialise() -> None:
    for modality in MODALITIES:
        for outcome in OUTCOMES:
            STUDIES.labels(modality=modality, outcome=outcome)
        for priority in PRIORITIES:
            PRIORITY.labels(modality=modality, priority=priority)
    from oncostream import __version__ as version

    BUILD_INFO.labels(version=version, python=platform.python_version()).set(1)
    # exam scores are deciles of the reference phantom population (postprocess/mammo_policy.py)
    for score_bin in SCORE_BINS:
        MODEL_SCORE_REFERENCE.labels(model=SCORED_MODELS["MG"], bin=score_bin).set(0.1)
    # every bin of the configured program from zero: an empty bin is part of the drift measure
    from oncostream.settings import Settings

    program = Settings().program
    for score_bin in SCORE_BINS:
        MODEL_SCORE_BIN.labels(model=SCORED_MODELS["MG"], program=program, bin=score_bin)


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


def stage(name: str, modality: str):
    """``with metrics.stage("publish", study.modality): ...`` times one stage of one study."""
    return timed(STAGE_SECONDS, stage=name, modality=modality)


def observe_stage(name: str, modality: str, seconds: float) -> None:
    record(lambda: STAGE_SECONDS.labels(stage=name, modality=modality).observe(max(seconds, 0.0)))


def _seconds_since(moment) -> float:
    now = datetime.now(moment.tzinfo)  # naive stays naive, aware compares in its own zone
    return max((now - moment).total_seconds(), 0.0)


def observe_assembly_wait(study) -> None:
    """First instance received to processing started: assembly, quiet time and queueing for a slot."""
    record(lambda: STAGE_SECONDS.labels(stage="assembly_wait", modality=study.modality)
           .observe(_seconds_since(study.arrived_at)))


def manufacturer_label(value) -> str:
    """A bounded, identifier-free label from (0008,0070) Manufacturer: lower-case words, at most 32
    characters, and "other" past MAX_MANUFACTURERS distinct values in this process."""
    name = re.sub(r"[^a-z0-9]+", "_", str(value or "").lower()).strip("_")[:32] or "unknown"
    with _manufacturers_lock:
        if name not in _manufacturers:
            if len(_manufacturers) >= MAX_MANUFACTURERS:
                return "other"
            _manufacturers.add(name)
    return name


def age_band(value) -> str:
    """(0010,1010) Patient's Age ("061Y") as a ten-year band ("60-69"); "unknown" otherwise."""
    match = re.fullmatch(r"(\d{3})Y", str(value or "").strip())
    if not match:
        return "unknown"
    decade = min(int(match.group(1)) // 10 * 10, 80)
    return "80+" if decade == 80 else f"{decade}-{decade + 9}"


def study_score(event) -> float:
    """The study-level malignancy probability the score histograms watch."""
    probability = getattr(event.category, "malignancy_probability", None)
    if probability is not None:
        return float(probability)
    return max((float(f.malignancy_probability) for f in event.findings
                if getattr(f, "malignancy_probability", None) is not None), default=0.0)


def observe_published(result) -> None:
    """Everything recorded once a study's outputs are durably published (oncostream.app.lifecycle)."""
    event = result.event
    latency = _seconds_since(event.arrived_at)  # to now: every sink has taken the result
    observe_stage("publish", event.modality, _seconds_since(event.triaged_at))  # triaged_at: result built
    outcome = "incomplete" if event.incomplete else "triaged"
    record(lambda: STUDIES.labels(modality=event.modality, outcome=outcome).inc())
    record(lambda: STUDY_LATENCY.labels(modality=event.modality, program=event.program,
                                        priority=event.priority).observe(latency))
    record(lambda: PRIORITY.labels(modality=event.modality, priority=event.priority).inc())
    record(_observe_models, result)


def _observe_models(result) -> None:
    event = result.event
    for model, release in event.model_versions.items():
        MODEL_INFO.labels(model=model, release=str(release)[:64]).set(1)
    model = SCORED_MODELS.get(event.modality)
    if model is None:
        return
    first = result.study.datasets[0] if result.study.datasets else {}
    density = getattr(event.category, "density", None) or "n/a"
    MODEL_SCORE.labels(model=model, program=event.program, manufacturer=manufacturer_label(first.get("Manufacturer")),
                       density=density, age_band=age_band(first.get("PatientAge"))).observe(study_score(event))
    exam_score = getattr(event.category, "exam_score", None)
    if exam_score is not None:
        MODEL_SCORE_BIN.labels(model=model, program=event.program, bin=str(exam_score)).inc()


class _LagProbe:
    """Consumer lag per assigned partition from what the consumer already knows (no broker request):
    the high watermark of the last fetch response minus the next position. At most every ``every_s``."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self._last = 0.0
        self._labelled: set[tuple[str, str]] = set()

    def __call__(self, consumer) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        seen = set()
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = consumer.position(tp, timeout_ms=0)
            if highwater is None or position is None:
                continue
            labels = (tp.topic, str(tp.partition))
            CONSUMER_LAG.labels(*labels).set(max(highwater - position, 0))
            seen.add(labels)
        for labels in self._labelled - seen:  # revoked: another member reports it now
            CONSUMER_LAG.remove(*labels)
        self._labelled = seen


observe_consumer_lag = _LagProbe()


def beat(loop: str = "worker") -> None:
    """The loop went round: what its liveness alert and `oncostream health` read."""
    record(lambda: HEARTBEAT.labels(loop=loop).set(time.time()))


record(_initialise)
