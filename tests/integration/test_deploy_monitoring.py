"""A real Prometheus scrapes a real `oncostream worker` that triages synthetic studies from the real
broker: the per-priority latency (what the SLA rules read), stage, consumer-lag and model-score series
come back with the counts the triage events imply, the drift recording rule evaluates, and the worker's
loop heartbeat satisfies `oncostream health`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml

from oncostream.metrics import manufacturer_label
from oncostream.services.base import free_port
from oncostream.settings import REPO_ROOT
from oncostream.streaming import produce_files
from oncostream.synth.dicom import MANUFACTURER

pytestmark = pytest.mark.integration

ONCOSTREAM = str(Path(sys.executable).with_name("oncostream"))
N_MAMMO, N_LDCT, SEED = 3, 1, 77
WAIT_S = 240.0


def _query(url: str, promql: str) -> list[dict]:
    response = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    response.raise_for_status()
    return response.json()["data"]["result"]


def _value(url: str, promql: str) -> float | None:
    result = _query(url, promql)
    return float(result[0]["value"][1]) if result else None


def _wait_for(url: str, promql: str, expected: float, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _value(url, promql) == expected:
            return
        time.sleep(1.0)
    pytest.fail(f"{promql} != {expected} within {timeout_s:.0f} s (last: {_value(url, promql)})")


@pytest.fixture
def worker_scraped(kafka_topics, prometheus, prometheus_targets, tmp_path):
    """(Prometheus URL, topics, triage events by study, instances produced, health file) once every study
    produced has been triaged and scraped."""
    from oncostream.synth.command import write_studies

    folders = write_studies(tmp_path / "studies", mammo=N_MAMMO, ldct=N_LDCT, seed=SEED, size="small")
    files = sorted(p for folder in folders for p in folder.glob("*.dcm"))
    port, health_file = free_port(), tmp_path / "run" / "heartbeat"
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([ONCOSTREAM, "worker", "--bootstrap", kafka_topics.bootstrap, "--topic",
                                    kafka_topics.dicom, "--metrics-port", str(port), "--health-file", str(health_file)],
                                   env=kafka_topics.env(), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        prometheus_targets([f"127.0.0.1:{port}"])
        url = prometheus.env["PROMETHEUS_URL"]
        # the studies are sent once Prometheus has scraped the worker's counters at zero: counters first
        # seen at their final value have no increase, and the drift rule's share of each bin is then 0/0
        # (a worker fast enough to finish a small backlog before its first scrape made PSI NaN)
        _wait_for(url, 'sum(oncostream_model_score_bin_total{model="mammo_screening"})', 0.0)
        report = produce_files(files, kafka_topics.settings(), kafka_topics.bootstrap)
        try:
            _wait_for(url, 'sum(oncostream_studies_total{outcome=~"triaged|incomplete"})', N_MAMMO + N_LDCT)
        except BaseException:
            print(log_path.read_text(errors="replace")[-4000:])
            raise
        events = {}
        for record in kafka_topics.read(kafka_topics.triage):
            event = json.loads(record.value)
            events[event["study_instance_uid"]] = event
        yield url, events, report.instances, health_file
    finally:
        process.kill()
        process.wait(timeout=30)


def test_prometheus_returns_sla_stage_lag_and_drift_series(worker_scraped):
    url, events, instances, health_file = worker_scraped
    assert len(events) == N_MAMMO + N_LDCT

    # latency by priority: the counts of the triage events, per priority and modality
    expected = Counter((e["priority"], e["modality"]) for e in events.values())
    got = {(r["metric"]["priority"], r["metric"]["modality"]): float(r["value"][1]) for r in _query(
        url, "sum by (priority, modality) (oncostream_study_latency_seconds_count)")}
    assert got == {key: float(n) for key, n in expected.items()}
    assert {r["metric"]["program"] for r in _query(url, "oncostream_study_latency_seconds_count")} == {"default"}

    # the SLA rules' expression evaluates for every priority seen (deploy/prometheus/slo_rules.yml)
    slo = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "slo_rules.yml").read_text())
    five_minutes = [r["expr"] for g in slo["groups"] for r in g["rules"]
                    if r.get("record") == "oncostream:sla_error_ratio:rate5m"]
    seen = {p for p, _ in expected}

    def evaluated() -> set[str]:
        return {r["metric"]["priority"] for expr in five_minutes for r in _query(url, expr)}

    # a rate needs two scrapes of a series: a latency series born with its first study has one until
    # the next scrape, so poll (bounded) rather than read once
    deadline = time.monotonic() + WAIT_S
    while evaluated() != seen and time.monotonic() < deadline:
        time.sleep(1.0)
    assert evaluated() == seen

    # one observation per study and stage, one parse per instance
    studies = float(len(events))
    for stage in ("assembly_wait", "inference", "postprocess", "publish"):
        assert _value(url, f'sum(oncostream_stage_seconds_count{{stage="{stage}"}})') == studies, stage
    assert _value(url, 'sum(oncostream_stage_seconds_count{stage="parse"})') == float(instances)

    # consumer lag per assigned partition: everything consumed
    # (the worker samples lag every few seconds and Prometheus scrapes on its own clock: poll, bounded)
    deadline = time.monotonic() + WAIT_S
    lag = _query(url, "oncostream_consumer_lag_records")
    while (not lag or sum(float(r["value"][1]) for r in lag) != 0.0) and time.monotonic() < deadline:
        time.sleep(1.0)
        lag = _query(url, "oncostream_consumer_lag_records")
    assert lag and {r["metric"]["partition"] for r in lag} <= {"0", "1", "2"}
    assert sum(float(r["value"][1]) for r in lag) == 0.0

    # model monitoring: one score per study, exam-score bins per mammography exam, a PSI from the rule
    assert _value(url, 'sum(oncostream_model_score_count{model="mammo_screening"})') == float(N_MAMMO)
    assert _value(url, 'sum(oncostream_model_score_count{model="ldct_screening"})') == float(N_LDCT)
    bins = Counter(str(e["category"]["exam_score"]) for e in events.values() if e["modality"] == "MG")
    got_bins = {r["metric"]["bin"]: float(r["value"][1]) for r in _query(url, "oncostream_model_score_bin_total")}
    assert got_bins == {str(b): float(bins.get(str(b), 0)) for b in range(1, 11)}
    # the subgroup labels: the phantoms' Manufacturer, normalised; density per exam; no age in the phantoms
    manufacturers = {r["metric"]["manufacturer"] for r in _query(url, "oncostream_model_score_count")}
    assert manufacturers == {manufacturer_label(MANUFACTURER)}
    densities = Counter(e["category"]["density"] for e in events.values() if e["modality"] == "MG")
    got_densities = {r["metric"]["density"]: float(r["value"][1]) for r in _query(
        url, 'sum by (density) (oncostream_model_score_count{model="mammo_screening"})')}
    assert got_densities == {d: float(n) for d, n in densities.items()}
    assert {r["metric"]["age_band"] for r in _query(url, "oncostream_model_score_count")} == {"unknown"}
    deadline = time.monotonic() + 30
    while (psi := _value(url, 'oncostream:model_score_psi:1d{model="mammo_screening"}')) is None:
        assert time.monotonic() < deadline, "the drift recording rule produced nothing"
        time.sleep(1.0)
    assert psi > 0  # 3 exams cannot spread over 10 deciles

    # the loop's heartbeat: the Prometheus gauge and the liveness file
    assert time.time() - _value(url, "max(oncostream_loop_heartbeat_timestamp_seconds)") < 60
    checked = subprocess.run([ONCOSTREAM, "health", "--file", str(health_file), "--max-age", "60"],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
