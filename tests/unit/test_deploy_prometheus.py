"""deploy/prometheus: the rules load (`promtool check rules`), every alert fires in one case and stays
silent in another (`promtool test rules` on deploy/prometheus/tests/*.test.yml), and the alerts read only
metrics oncostream or Triton export. promtool comes with Debian's prometheus package
(scripts/install_system_deps.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from oncostream.settings import REPO_ROOT

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
RULE_FILES = (PROMETHEUS / "rules.yml", PROMETHEUS / "slo_rules.yml")
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.test.yml"))


def _promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: scripts/install_system_deps.sh installs Debian's prometheus")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def _alerts() -> set[str]:
    return {rule["alert"] for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule}


def test_rules_pass_promtool_check():
    result = _promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_rule_tests_pass(test_file: Path):
    result = _promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_case():
    firing, silent = set(), set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = _alerts()
    assert alerts, "no alerts"
    assert not alerts - firing, f"alerts never shown firing: {sorted(alerts - firing)}"
    assert not alerts - silent, f"alerts never shown silent: {sorted(alerts - silent)}"


def test_a_broken_expectation_fails(tmp_path: Path):
    """promtool really compares: the worker-down case expecting silence must fail."""
    case = yaml.safe_load((PROMETHEUS / "tests" / "pipeline.test.yml").read_text())
    case["rule_files"] = [str(PROMETHEUS / "rules.yml")]
    case["tests"] = case["tests"][:1]
    case["tests"][0]["alert_rule_test"][0]["exp_alerts"] = []
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump(case))
    assert _promtool("test", "rules", str(broken)).returncode != 0


def test_alerts_read_only_exported_metrics():
    from prometheus_client import REGISTRY

    from oncostream import metrics  # noqa: F401 - registers the families

    exported = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        exported |= {family.name + suffix for suffix in suffixes}
    text = "\n".join(path.read_text() for path in RULE_FILES)
    used = set(re.findall(r"\boncostream_[a-z_]+", text))
    assert used and used <= exported, sorted(used - exported)
    triton = set(re.findall(r"\bnv_[a-z_]+", text))
    # Triton's metric names (docs: user_guide/metrics.md), which the dashboard charts too
    assert triton <= {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                      "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"}, triton


def test_up_alerts_name_the_jobs_the_pod_monitors_set():
    monitors = yaml.safe_load_all((REPO_ROOT / "deploy" / "k8s" / "base" / "podmonitors.yaml").read_text())
    jobs = {r["replacement"] for m in monitors for e in m["spec"]["podMetricsEndpoints"]
            for r in e["relabelings"] if r["targetLabel"] == "job"}
    text = (PROMETHEUS / "rules.yml").read_text()
    used = set(re.findall(r'up\{job="([^"]+)"\}', text))
    assert used and used <= jobs, (used, jobs)
