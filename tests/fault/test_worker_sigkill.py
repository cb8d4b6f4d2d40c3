"""SIGKILL of `oncostream worker` at each stage of the study lifecycle, on the real broker: a fresh worker
afterwards triages every study; a study is triaged twice only when it was published and not committed, and
then with identical UIDs and content.

The worker halts at the stage (tests/fault/staged_worker.py) before it is killed, so each case kills at
that stage and nowhere else. A kill while a study is still half assembled (its other instances not yet
produced) is test_sigkill_mid_study_then_restart_triages_every_study_once_in_content in
tests/integration/test_kafka_worker.py.
"""

from __future__ import annotations

import signal

import pytest

from oncostream.streaming import produce_files
from tests.fault.ledger import Ledger, committed_to_end, wait_for
from tests.fault.staged_worker import STAGES

pytestmark = pytest.mark.integration

WAIT_S = 180.0


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_at_a_stage_then_a_fresh_worker_triages_every_study(stage, kafka_topics, fault_studies,
                                                                    spawn_worker, tmp_path):
    uids = [*fault_studies.of("MG")[:2], fault_studies.of("CT")[0]]
    produce_files(fault_studies.files(uids), kafka_topics.settings(), kafka_topics.bootstrap)

    first = spawn_worker(kafka_topics, tmp_path / "worker-1.log", stage=stage, halt_dir=tmp_path / "halt")
    halted = wait_for(first.halted_on, WAIT_S, f"the worker reaching {stage}", [first])
    assert first.signal(signal.SIGKILL) == -signal.SIGKILL

    # what the kill left: the halted study is on the triage topic only once it was published
    killed = Ledger.read(kafka_topics)
    assert killed.triaged == ({halted} if stage == "published" else set())
    # and no committed offset passes its first instance
    records = [r for r in kafka_topics.read(kafka_topics.dicom) if r.key == halted.encode()]
    [partition] = {r.partition for r in records}
    committed = kafka_topics.committed()[partition]
    assert committed is None or committed <= min(r.offset for r in records)

    second = spawn_worker(kafka_topics, tmp_path / "worker-2.log")
    wait_for(lambda: Ledger.read(kafka_topics).triaged == set(uids) and committed_to_end(kafka_topics), WAIT_S,
             "every study triaged and committed after the restart", [second], interval_s=1.0)
    assert second.signal(signal.SIGTERM) == 0, second.log_tail()

    ledger = Ledger.read(kafka_topics)
    ledger.assert_balanced(set(uids))
    assert not ledger.dead
    # published but not committed: replayed once, identically (assert_balanced compares the copies)
    assert ledger.replays() == ({halted: 2} if stage == "published" else {})
