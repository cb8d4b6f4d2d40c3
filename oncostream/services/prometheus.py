"""Prometheus on loopback (Debian package ``prometheus``) scraping oncostream workers' ``/metrics``.

Targets live in a file_sd JSON file next to the configuration, so ``set_targets`` can change what
is scraped while Prometheus runs (file_sd is re-read on change; a ``/-/reload`` makes it prompt).
The alerting rules in ``deploy/prometheus/rules.yml`` are loaded too, so the shipped rules run
against real series in tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import requests

from oncostream.services.base import RunningService, ServiceStartError, free_port, wait_until
from oncostream.settings import REPO_ROOT

PROMETHEUS_BINARY = "prometheus"
PROMTOOL_BINARY = "promtool"
RULES_FILE = REPO_ROOT / "deploy" / "prometheus" / "rules.yml"
SCRAPE_INTERVAL_S = 1
START_TIMEOUT_S = 60.0
JOB_NAME = "oncostream"


def write_config(workdir: Path, targets: Iterable[str] = (), rules: Path | None = RULES_FILE) -> Path:
    """Write ``prometheus.yml`` and its file_sd target list; return the configuration path."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_targets(workdir, targets)
    rule_files = ""
    if rules is not None and Path(rules).exists():
        rule_files = f"rule_files:\n  - {json.dumps(str(Path(rules).resolve()))}\n"
    # JSON is valid YAML: quoting every path keeps odd characters in workdir harmless
    config = (
        "global:\n"
        f"  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
        f"  evaluation_interval: {SCRAPE_INTERVAL_S}s\n"
        f"{rule_files}"
        "scrape_configs:\n"
        f"  - job_name: {JOB_NAME}\n"
        "    file_sd_configs:\n"
        f"      - files: [{json.dumps(str(_targets_path(workdir)))}]\n"
        f"        refresh_interval: {SCRAPE_INTERVAL_S}s\n"
    )
    path = workdir / "prometheus.yml"
    path.write_text(config)
    return path


def write_targets(workdir: Path, targets: Iterable[str]) -> None:
    """Replace the scraped targets (HOST:PORT each); written atomically so Prometheus never reads half."""
    targets = list(targets)
    for target in targets:
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"targets: want HOST:PORT, got {target!r}")
    tmp = _targets_path(workdir).with_suffix(".tmp")
    # always one group (possibly empty): file_sd then replaces group 0 instead of keeping a stale one
    tmp.write_text(json.dumps([{"targets": targets, "labels": {}}]))
    tmp.replace(_targets_path(workdir))


def _targets_path(workdir: Path) -> Path:
    return workdir / "targets.json"


def is_available() -> bool:
    return shutil.which(PROMETHEUS_BINARY) is not None


def start(workdir: Path, targets: Sequence[str] = ()) -> RunningService:
    """Start Prometheus with its TSDB in ``workdir``, scraping ``targets`` (HOST:PORT) every second."""
    if not is_available():
        raise ServiceStartError("Prometheus needs the `prometheus` binary "
                                "(Debian package prometheus: scripts/install_system_deps.sh)")
    workdir = Path(workdir).resolve()
    shutil.rmtree(workdir / "data", ignore_errors=True)
    config = write_config(workdir, targets)
    port = free_port()
    log_path = workdir / "prometheus.log"
    log = open(log_path, "wb")  # noqa: SIM115 - stays open for the child's lifetime
    process = subprocess.Popen(
        [shutil.which(PROMETHEUS_BINARY), f"--config.file={config}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--web.enable-lifecycle", "--storage.tsdb.retention.time=1d"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/-/ready", timeout=2).ok, START_TIMEOUT_S, "Prometheus",
                   process, log_path)
    except ServiceStartError:
        process.kill()
        process.wait(timeout=10)
        raise
    return RunningService(name="prometheus", env={"PROMETHEUS_URL": url}, process=process,
                          workdir=workdir, log_path=log_path, extra={"config": config, "port": port})


def set_targets(service: RunningService, targets: Iterable[str]) -> None:
    """Point a running Prometheus at new targets and ask it to reload now rather than on its next poll."""
    write_targets(service.workdir, targets)
    response = requests.post(f"{service.env['PROMETHEUS_URL']}/-/reload", timeout=10)
    if not response.ok:
        raise ServiceStartError(f"Prometheus reload failed: HTTP {response.status_code} {response.text[:200]}")
