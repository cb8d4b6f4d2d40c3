"""`oncostream worker --triton`: a Kafka stream processed end to end by the real Triton (session
server of tests/fixtures/triton.py) and the real broker (tests/fixtures/kafka.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests

from oncostream.model_contract import MODEL_NAMES

pytestmark = pytest.mark.integration

SEED = 1_000_321  # evaluation range: never trained on
WORKER_TIMEOUT_S = 240


def _successes(metrics_url: str) -> dict[str, float]:
    text = requests.get(metrics_url, timeout=10).text
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^nv_inference_request_success\{model="([^"]+)",version="1"\} (\S+)$', text, re.M)}


def test_worker_with_triton_processes_a_kafka_stream(kafka_topics, triton_server, tmp_path):
    from oncostream.synth.command import write_studies

    studies = tmp_path / "studies"
    write_studies(studies, mammo=1, ldct=1, seed=SEED, size="small")
    env = kafka_topics.env()
    cli = [sys.executable, "-m", "oncostream.cli"]
    subprocess.run([*cli, "produce", str(studies), "--bootstrap", kafka_topics.bootstrap,
                    "--topic", kafka_topics.dicom], env=env, check=True, capture_output=True, timeout=120)
    before = _successes(triton_server.extra["metrics_url"])

    out = tmp_path / "out"
    worker = subprocess.run([*cli, "worker", "--bootstrap", kafka_topics.bootstrap, "--topic", kafka_topics.dicom,
                             "--triton", triton_server.env["TRITON_GRPC"], "--max-studies", "2", "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    assert worker.returncode == 0, worker.stderr[-3000:]

    events = [json.loads(r.value) for r in kafka_topics.read(kafka_topics.triage)]
    assert sorted(e["modality"] for e in events) == ["CT", "MG"]
    for event in events:
        assert event["priority"] in {"URGENT", "HIGH", "ROUTINE", "LOW"}
        family = "ldct_" if event["modality"] == "CT" else "mammo_"
        assert any(m.startswith(family) for m in event["model_versions"])
        assert set(event["model_versions"]) <= set(MODEL_NAMES)
    lines = (out / "triage.jsonl").read_text().splitlines()
    assert {json.loads(line)["study_instance_uid"] for line in lines} == {e["study_instance_uid"] for e in events}

    after = _successes(triton_server.extra["metrics_url"])
    for ensemble in ("ldct_screening", "mammo_screening"):
        assert after.get(ensemble, 0) > before.get(ensemble, 0), f"the worker did not call {ensemble} on Triton"
