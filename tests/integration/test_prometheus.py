"""A real Prometheus scrapes oncostream's real /metrics endpoint (oncostream/metrics.py, served by a
child process); the shipped alert rules and Grafana dashboard are checked against those metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import requests

from oncostream.services import prometheus as prometheus_service
from oncostream.settings import REPO_ROOT

pytestmark = pytest.mark.integration

RULES = REPO_ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "oncostream.json"
# every family the dashboard charts (deploy/generate.py)
EXPORTED = ("oncostream_studies_total", "oncostream_instances_total", "oncostream_dlq_total",
            "oncostream_study_latency_seconds", "oncostream_inference_seconds", "oncostream_in_flight_studies",
            "oncostream_consumer_lag_records", "oncostream_triage_priority_total", "oncostream_stage_seconds",
            "oncostream_loop_heartbeat_timestamp_seconds", "oncostream_model_score", "oncostream_model_score_bin_total",
            "oncostream_model_score_reference_ratio", "oncostream_model_info", "oncostream_build_info")
# a worker's metrics after 2 CT studies triaged, 1 mammography exam failed, 3 instances rejected
_EXPORTER = """
import sys, time
from oncostream import metrics
metrics.STUDIES.labels(modality="CT", outcome="triaged").inc(2)
metrics.STUDIES.labels(modality="MG", outcome="failed").inc()
metrics.INSTANCES.inc(250)
metrics.DLQ.labels(reason="truncated").inc(3)
metrics.STUDY_LATENCY.labels(modality="CT", program="default", priority="URGENT").observe(4.2)
metrics.INFERENCE_SECONDS.labels(model="ldct_screening").observe(1.5)
metrics.IN_FLIGHT.set(1)
print(metrics.serve(0), flush=True)
time.sleep(600)
"""
QUERY_TIMEOUT_S = 30.0


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def exporter():
    """``HOST:PORT`` of a child process serving oncostream's metrics with known values."""
    process = subprocess.Popen([sys.executable, "-c", _EXPORTER], stdout=subprocess.PIPE, text=True,
                               cwd=REPO_ROOT, start_new_session=True)
    try:
        port = int(process.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(timeout=10)


def _query(url: str, promql: str) -> list[dict]:
    response = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    response.raise_for_status()
    return response.json()["data"]["result"]


def _poll_query(url: str, promql: str) -> list[dict]:
    """The query's result once non-empty; fails after QUERY_TIMEOUT_S."""
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    while time.monotonic() < deadline:
        result = _query(url, promql)
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"{promql!r} returned nothing within {QUERY_TIMEOUT_S:.0f} s")


def test_prometheus_scrapes_oncostream_metrics(prometheus, prometheus_targets, exporter):
    prometheus_targets([exporter])
    url = prometheus.env["PROMETHEUS_URL"]
    result = _poll_query(url, 'oncostream_studies_total{modality="CT",outcome="triaged"}')
    assert float(result[0]["value"][1]) == 2.0
    assert result[0]["metric"]["instance"] == exporter
    assert float(_poll_query(url, "oncostream_instances_total")[0]["value"][1]) == 250.0
    assert float(_poll_query(url, 'oncostream_dlq_total{reason="truncated"}')[0]["value"][1]) == 3.0
    assert float(_poll_query(url, "oncostream_in_flight_studies")[0]["value"][1]) == 1.0
    assert float(_poll_query(url, 'oncostream_study_latency_seconds_count{modality="CT"}')[0]["value"][1]) == 1.0
    assert float(_poll_query(url, 'oncostream_inference_seconds_sum{model="ldct_screening"}')[0]["value"][1]) == 1.5
    assert float(_poll_query(url, 'up{job="oncostream"}')[0]["value"][1]) == 1.0


def test_shipped_rules_load_and_evaluate_healthy(prometheus, prometheus_targets, exporter):
    prometheus_targets([exporter])
    url = prometheus.env["PROMETHEUS_URL"]
    _poll_query(url, "oncostream_instances_total")
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    while True:
        groups = requests.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules):
            break
        assert time.monotonic() < deadline, "rules were not evaluated in time"
        time.sleep(0.25)
    assert {group["name"] for group in groups} == {"oncostream-recording", "oncostream-pipeline", "oncostream-triton",
                                                   "oncostream-models"}
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not unhealthy


def test_retargeting_drops_the_old_target(prometheus, prometheus_targets, exporter):
    url = prometheus.env["PROMETHEUS_URL"]
    prometheus_targets([exporter])
    _poll_query(url, f'up{{instance="{exporter}"}} == 1')
    prometheus_targets([])
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    while any(t["labels"]["instance"] == exporter for t in
              requests.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]):
        assert time.monotonic() < deadline, "target still active after being removed"
        time.sleep(0.25)


def test_generated_config_passes_promtool(tmp_path):
    config = prometheus_service.write_config(tmp_path, ["127.0.0.1:9100", "127.0.0.1:9101"])
    checked = _promtool("check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("target", ["no-port", "host:", ":9100", "host:http"],
                         ids=["no-port", "empty-port", "empty-host", "named-port"])
def test_malformed_targets_are_refused(tmp_path, target):
    with pytest.raises(ValueError, match="HOST:PORT"):
        prometheus_service.write_targets(tmp_path, [target])


def test_rules_pass_promtool():
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _metric_names(expr: str) -> set[str]:
    """oncostream metric families an expression reads (histogram suffixes folded onto the family)."""
    names = set(re.findall(r"\boncostream_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def _registered_metrics() -> set[str]:
    """Metric families oncostream/metrics.py defines (counters without their _total suffix)."""
    from prometheus_client import REGISTRY

    from oncostream import metrics  # noqa: F401 - registers the families

    names = set()
    for family in REGISTRY.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return {name for name in names if name.startswith("oncostream_")}


def test_metrics_module_exports_what_rules_and_dashboard_read():
    assert set(EXPORTED) <= _registered_metrics()


def test_rules_and_dashboard_use_only_exported_metrics():
    text = RULES.read_text()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs, "dashboard has no queries"
    used = _metric_names(text) | set().union(*(_metric_names(e) for e in exprs))
    registered = _registered_metrics()
    assert used <= registered, f"unknown metrics: {sorted(used - registered)}"
    # every SLA metric is on the dashboard, so what pages someone can also be looked at
    assert set().union(*(_metric_names(e) for e in exprs)) == set(EXPORTED)


def test_every_dashboard_query_runs_on_real_series(prometheus, prometheus_targets, exporter):
    """Each panel's PromQL parses and evaluates on Prometheus (Grafana's $job variable set to all)."""
    prometheus_targets([exporter])
    url = prometheus.env["PROMETHEUS_URL"]
    _poll_query(url, "oncostream_instances_total")
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$job", ".+")
            response = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
            assert response.ok and response.json()["status"] == "success", (panel["title"], response.text)
