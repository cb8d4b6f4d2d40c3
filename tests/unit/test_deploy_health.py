"""The worker's liveness signal (oncostream/app/health.py) and the label helpers of oncostream/metrics.py
that keep identifiers out of metric labels."""

from __future__ import annotations

import time

import pytest
from kafka import TopicPartition
from prometheus_client import REGISTRY

from oncostream import metrics
from oncostream.app import health
from oncostream.cli import main


def test_heartbeat_file_is_fresh_after_a_beat_and_stale_later(tmp_path):
    path = tmp_path / "run" / "heartbeat"
    assert health.heartbeat_age(path) is None
    health.Heartbeat(path).beat()
    age = health.heartbeat_age(path)
    assert age is not None and 0 <= age < 5
    assert health.heartbeat_age(path, now=time.time() + 600) > 590


def test_heartbeat_sets_the_gauge_alerts_read(tmp_path):
    before = time.time()
    health.Heartbeat(None).beat()
    value = REGISTRY.get_sample_value("oncostream_loop_heartbeat_timestamp_seconds", {"loop": "worker"})
    assert value is not None and value >= before - 1


@pytest.mark.parametrize("age_s, status", [(1, 0), (900, 1)], ids=["fresh", "stale"])
def test_health_command_exit_status(tmp_path, age_s, status):
    path = tmp_path / "heartbeat"
    path.write_text(f"{time.time() - age_s:.3f}\n")
    assert main(["health", "--file", str(path), "--max-age", "300"]) == status


def test_health_command_fails_without_a_heartbeat(tmp_path):
    assert main(["health", "--file", str(tmp_path / "never-written")]) == 1


@pytest.mark.parametrize("value, band", [("061Y", "60-69"), ("049Y", "40-49"), ("092Y", "80+"), ("006M", "unknown"),
                                         (None, "unknown"), ("", "unknown")])
def test_age_band_is_coarse(value, band):
    assert metrics.age_band(value) == band


def test_manufacturer_label_is_normalised_and_bounded(monkeypatch):
    monkeypatch.setattr(metrics, "_manufacturers", set())
    assert metrics.manufacturer_label("GE MEDICAL SYSTEMS") == "ge_medical_systems"
    assert metrics.manufacturer_label(None) == "unknown"
    monkeypatch.setattr(metrics, "_manufacturers", set())
    labels = {metrics.manufacturer_label(f"vendor {i}") for i in range(3 * metrics.MAX_MANUFACTURERS)}
    assert len(labels) == metrics.MAX_MANUFACTURERS + 1 and "other" in labels


def test_counters_alerts_compare_exist_from_start_up():
    for modality in metrics.MODALITIES:
        for outcome in metrics.OUTCOMES:
            assert REGISTRY.get_sample_value("oncostream_studies_total",
                                             {"modality": modality, "outcome": outcome}) is not None
    assert REGISTRY.get_sample_value("oncostream_model_score_reference_ratio",
                                     {"model": "mammo_screening", "bin": "1"}) == pytest.approx(0.1)


class _Consumer:
    def __init__(self, partitions):
        self.partitions = partitions  # TopicPartition-like -> (highwater, position)

    def assignment(self):
        return set(self.partitions)

    def highwater(self, tp):
        return self.partitions[tp][0]

    def position(self, tp, timeout_ms=None):
        return self.partitions[tp][1]


def test_consumer_lag_per_partition_and_revoked_partitions_dropped():
    probe = metrics._LagProbe(every_s=0.0)
    probe(_Consumer({TopicPartition("t-lag", 0): (120, 100), TopicPartition("t-lag", 1): (None, 5)}))
    lag = lambda partition: REGISTRY.get_sample_value("oncostream_consumer_lag_records",  # noqa: E731
                                                      {"topic": "t-lag", "partition": partition})
    assert lag("0") == 20
    assert lag("1") is None  # nothing fetched yet: no guess
    probe(_Consumer({}))  # revoked: another member reports it now
    assert lag("0") is None
