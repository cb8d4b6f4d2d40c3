"""A service taken away under a running `oncostream worker` and brought back on the same ports: Triton,
the Kafka broker, the PACS. Each service is the test's own (tests/fault/conftest.py), so the session's
stay up. After each outage: every study triaged, none dead-lettered for the outage, replays identical
(tests/fault/ledger.py), every input offset committed.
"""

from __future__ import annotations

import signal

import pytest
import requests

from oncostream.streaming import produce_files
from tests.fault.ledger import Ledger, committed_to_end, topics_on, wait_for

pytestmark = pytest.mark.integration

WAIT_S = 180.0


def _finish(worker, topics, uids: list[str]) -> Ledger:
    """Wait until every study is triaged and committed, stop the worker, check the acceptance invariant."""
    wait_for(lambda: Ledger.read(topics).triaged == set(uids) and committed_to_end(topics), WAIT_S,
             "every study triaged and committed", [worker], interval_s=1.0)
    assert worker.signal(signal.SIGTERM) == 0, worker.log_tail()
    ledger = Ledger.read(topics)
    ledger.assert_balanced(set(uids))
    assert not ledger.dead, f"dead-lettered for a transient outage: {ledger.dead}"
    return ledger


def test_triton_stopped_and_restarted_with_studies_in_flight(kafka_topics, own_triton, fault_studies,
                                                             spawn_worker, tmp_path):
    mg, ct = fault_studies.of("MG"), fault_studies.of("CT")
    settings = kafka_topics.settings()
    produce_files(fault_studies.files(mg[:1]), settings, kafka_topics.bootstrap)
    worker = spawn_worker(kafka_topics, tmp_path / "worker.log", "--triton", own_triton.env["TRITON_GRPC"])
    wait_for(lambda: Ledger.read(kafka_topics).triaged == set(mg[:1]), WAIT_S, "the first exam triaged", [worker])

    own_triton.stop()
    produce_files(fault_studies.files([mg[1], ct[0]]), settings, kafka_topics.bootstrap)
    # the worker pauses on BackendUnavailable (backoff, partitions paused) instead of failing the studies
    wait_for(lambda: "backend unavailable" in worker.log_text(), WAIT_S, "the worker backing off", [worker])
    assert not Ledger.read(kafka_topics).dead

    own_triton.start_again()
    ledger = _finish(worker, kafka_topics, [mg[0], mg[1], ct[0]])
    assert ledger.replays() == {}


def test_broker_restarted_under_a_worker_publishing_and_holding_a_study(own_broker, fault_studies, spawn_worker,
                                                                         tmp_path):
    topics = topics_on(own_broker.env["KAFKA_BOOTSTRAP"])
    mg, ct = fault_studies.of("MG"), fault_studies.of("CT")
    held = fault_studies.files_of[ct[0]]
    first_half, second_half = held[: len(held) // 2], held[len(held) // 2:]
    settings = topics.settings()
    produce_files([*fault_studies.files(mg[:2]), *first_half], settings, topics.bootstrap)
    # halted once a study is inferred: the broker goes down before the worker publishes it
    worker = spawn_worker(topics, tmp_path / "worker.log", stage="inferred", halt_dir=tmp_path / "halt",
                          ONCOSTREAM_ASSEMBLY_TIMEOUT_S="600")  # the half series stays open across the restart
    wait_for(worker.halted_on, WAIT_S, "the worker inferring a study", [worker])

    own_broker.stop()
    worker.go()  # publishes into the stopped broker: the records wait in the producer, or are sent again
    own_broker.start_again()
    wait_for(lambda: Ledger.read(topics).triaged == set(mg[:2]), WAIT_S, "both exams triaged after the restart",
             [worker], interval_s=1.0)
    # the half series is unfinished: no committed offset passes its first instance
    records = [r for r in topics.read(topics.dicom) if r.key == ct[0].encode()]
    [partition] = {r.partition for r in records}
    committed = topics.committed()[partition]
    assert committed is None or committed <= min(r.offset for r in records), worker.log_tail()

    produce_files([*second_half, *fault_studies.files([mg[2], ct[1]])], settings, topics.bootstrap)
    ledger = _finish(worker, topics, [*mg, *ct])
    # a rebalance while the broker was away may replay a study: only identically (checked above)
    assert set(ledger.replays()) <= set(mg[:2]), ledger.replays()


def _pacs_settings(orthanc) -> dict[str, str]:
    """The worker's PACS sink (C-STORE) pointed at ``orthanc``."""
    return {"ONCOSTREAM_PACS_ADDRESS": orthanc.env["ORTHANC_DICOM"],
            "ONCOSTREAM_PACS_CALLED_AE": orthanc.extra["ae_title"]}


def _stored(orthanc_http: str, sop_instance_uid: str) -> bool:
    found = requests.post(f"{orthanc_http}/tools/lookup", data=sop_instance_uid, timeout=10).json()
    return any(item.get("Type") == "Instance" for item in found)


def test_pacs_down_then_back_delivers_every_result_and_dead_letters_none(kafka_topics, own_orthanc, fault_studies,
                                                                         spawn_worker, tmp_path):
    mg, ct = fault_studies.of("MG"), fault_studies.of("CT")
    http = own_orthanc.env["ORTHANC_HTTP"]
    settings = kafka_topics.settings()

    def delivered() -> set[str]:
        """Studies whose SR and every SEG are stored in the PACS (its triage event names them)."""
        return {uid for uid, events in Ledger.read(kafka_topics).events.items()
                if all(_stored(http, sop) for sop in [events[0]["sr_sop_instance_uid"],
                                                     *events[0]["seg_sop_instance_uids"]])}

    produce_files(fault_studies.files(mg[:1]), settings, kafka_topics.bootstrap)
    worker = spawn_worker(kafka_topics, tmp_path / "worker.log", **_pacs_settings(own_orthanc))
    wait_for(lambda: delivered() == set(mg[:1]), WAIT_S, "the first exam in the PACS", [worker])

    own_orthanc.stop()
    produce_files(fault_studies.files([mg[1], ct[0]]), settings, kafka_topics.bootstrap)
    # the PACS sink's own retries ran out once; the lifecycle backs off and delivers again (not dead-lettered)
    wait_for(lambda: "delivery failed" in worker.log_text(), WAIT_S, "the lifecycle retrying delivery", [worker])
    assert not Ledger.read(kafka_topics).dead

    own_orthanc.start_again()
    wait_for(lambda: delivered() == {mg[0], mg[1], ct[0]}, WAIT_S, "every result in the PACS", [worker],
             interval_s=1.0)
    _finish(worker, kafka_topics, [mg[0], mg[1], ct[0]])


def test_a_pacs_down_past_the_delivery_attempts_dead_letters_the_study_and_never_triages_it(
        kafka_topics, own_orthanc, fault_studies, spawn_worker, tmp_path):
    own_orthanc.stop()  # and never back
    exam = fault_studies.of("MG")[:1]
    produce_files(fault_studies.files(exam), kafka_topics.settings(), kafka_topics.bootstrap)
    # two deliveries (each the PACS sink's own five tries, 7.5 s) instead of five: the same path, sooner
    worker = spawn_worker(kafka_topics, tmp_path / "worker.log", **_pacs_settings(own_orthanc),
                          ONCOSTREAM_DELIVERY_ATTEMPTS="2", ONCOSTREAM_RETRY_INITIAL_S="0.1")
    wait_for(lambda: Ledger.read(kafka_topics).dead and committed_to_end(kafka_topics), WAIT_S,
             "the exam dead-lettered and committed", [worker], interval_s=1.0)
    assert worker.signal(signal.SIGTERM) == 0, worker.log_tail()
    ledger = Ledger.read(kafka_topics)
    assert {uid: set(reasons) for uid, reasons in ledger.dead.items()} == {exam[0]: {"delivery_failed"}}
    # dead-lettered means not triaged: no triage event may announce a result that never reached the PACS
    ledger.assert_balanced(set(exam))
