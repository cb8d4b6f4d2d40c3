"""The study lifecycle's failure policy, one row at a time, with fake stages (no services, no models)."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

from oncostream.app.lifecycle import FAILURE_POLICY, Action, DeadLetter, Failure, Outcome, StudyLifecycle
from oncostream.errors import BackendUnavailable, DeadLetterUnavailable, StudyFailed
from oncostream.settings import Settings
from oncostream.study import Study
from postprocess.errors import SinkError

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def study(uid: str = "1.2.3", error: StudyFailed | None = None) -> Study:
    return Study(study_instance_uid=uid, modality="MG", datasets=[], arrived_at=NOW,
                 sources=[("t", 0, 1), ("t", 0, 2)], assembly_key=f"MG:{uid}", error=error)


def result_of(s: Study):
    event = SimpleNamespace(study_instance_uid=s.study_instance_uid, modality="MG", priority="ROUTINE",
                            incomplete=False, arrived_at=NOW, triaged_at=NOW)
    return SimpleNamespace(study=s, event=event)


class FakePipeline:
    def __init__(self, *failures):
        self.failures = list(failures)  # raised in order, then results
        self.calls = 0

    def process(self, s: Study):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return result_of(s)


class FakeSink:
    name = "fake"

    def __init__(self, *failures):
        self.failures = list(failures)  # raised by flush in order
        self.added, self.delivered, self.discarded = [], [], []

    def add(self, result):
        self.added.append(result.event.study_instance_uid)

    def flush(self, timeout_s: float = 60.0):
        if self.failures:
            raise self.failures.pop(0)
        self.delivered.append(self.added[-1])

    def discard(self, uid):
        self.discarded.append(uid)

    def close(self):
        pass


class FakeDeadLetter(DeadLetter):
    def __init__(self, refusals: int = 0):
        self.refusals = refusals
        self.pending, self.durable = [], []

    def add_study(self, s, reason, detail):
        self.pending += [(src, reason) for src in s.sources]

    def flush(self):
        if self.refusals:
            self.refusals -= 1
            raise DeadLetterUnavailable("log unwritable")
        self.durable += self.pending
        self.pending = []


class FakeAssembler:
    def __init__(self):
        self.finished_keys = []

    def finished(self, key):
        self.finished_keys.append(key)


class Waits:
    def __init__(self, allowed: int = 100):
        self.allowed = allowed
        self.delays = []

    def __call__(self, seconds: float) -> bool:
        self.delays.append(seconds)
        return len(self.delays) <= self.allowed


def lifecycle(pipeline=None, sinks=None, dead_letter=None, waits=None, **settings):
    settings = Settings(retry_initial_s=1, retry_max_s=4, **settings)
    return StudyLifecycle(settings, pipeline or FakePipeline(), sinks if sinks is not None else [FakeSink()],
                          dead_letter or FakeDeadLetter(), waits or Waits(), assembler=FakeAssembler())


def test_every_failure_kind_has_one_action():
    assert set(FAILURE_POLICY) == set(Failure)
    assert FAILURE_POLICY[Failure.BAD_INSTANCE].dimse_status == 0xC000
    assert FAILURE_POLICY[Failure.DEAD_LETTER_UNAVAILABLE].action is Action.PAUSE


def test_published_study_is_remembered_as_finished():
    lc = lifecycle()
    assert lc.finish(study()).outcome is Outcome.PUBLISHED
    assert lc.sinks[0].delivered == ["1.2.3"] and lc.assembler.finished_keys == ["MG:1.2.3"]


def test_a_study_assembly_failed_is_dead_lettered_whole_and_never_processed():
    pipeline, dead = FakePipeline(), FakeDeadLetter()
    lc = lifecycle(pipeline=pipeline, dead_letter=dead)
    finished = lc.finish(study(error=StudyFailed("missing_geometry", "no IOP", "1.2.3")))
    assert finished.outcome is Outcome.DEAD_LETTERED and pipeline.calls == 0
    assert dead.durable == [(("t", 0, 1), "missing_geometry"), (("t", 0, 2), "missing_geometry")]


def test_backend_unavailable_retries_with_backoff_past_any_attempt_count():
    pipeline = FakePipeline(*[BackendUnavailable("down", retry_after=0)] * 8)
    waits = Waits()
    lc = lifecycle(pipeline=pipeline, waits=waits)
    assert lc.finish(study()).outcome is Outcome.PUBLISHED
    assert waits.delays == [1, 2, 4, 4, 4, 4, 4, 4]


def test_backend_unavailable_at_shutdown_abandons_unacknowledged():
    lc = lifecycle(pipeline=FakePipeline(BackendUnavailable("down", retry_after=0)), waits=Waits(allowed=0))
    assert lc.finish(study()).outcome is Outcome.ABANDONED
    assert lc.assembler.finished_keys == []


def test_transient_sink_failure_is_retried_then_published():
    sink = FakeSink(SinkError("kafka", "timeout"))
    lc = lifecycle(sinks=[sink])
    assert lc.finish(study()).outcome is Outcome.PUBLISHED
    assert sink.added == ["1.2.3", "1.2.3"], "the study is resent, not forgotten"


def test_transient_sink_failure_past_the_attempts_is_dead_lettered_with_the_reason():
    sink, dead = FakeSink(*[SinkError("pacs", "busy")] * 3), FakeDeadLetter()
    lc = lifecycle(sinks=[sink], dead_letter=dead, delivery_attempts=3)
    finished = lc.finish(study())
    assert finished.outcome is Outcome.DEAD_LETTERED and finished.reason == "delivery_failed"
    assert sink.discarded == ["1.2.3"] and len(dead.durable) == 2


def test_a_study_dead_lettered_for_delivery_was_never_handed_to_the_sinks_that_announce_it_triaged():
    announcer = FakeSink()
    announcer.announces_triage = True  # the triage topic, triage.jsonl
    pacs = FakeSink(*[SinkError("pacs", "connection refused")] * 2)
    lc = lifecycle(sinks=[announcer, pacs], delivery_attempts=2)
    assert lc.finish(study()).reason == "delivery_failed"
    assert announcer.added == [] and pacs.added == ["1.2.3", "1.2.3"]
    assert lc.finish(study("4.5.6")).outcome is Outcome.PUBLISHED
    assert announcer.delivered == ["4.5.6"]


def test_permanent_refusal_dead_letters_at_once_and_the_next_study_flows():
    sink = FakeSink(SinkError("pacs", "0xA900", permanent=True, studies=("1.2.3",)))
    lc = lifecycle(sinks=[sink])
    assert lc.finish(study()).reason == "delivery_refused"
    assert lc.finish(study("4.5.6")).outcome is Outcome.PUBLISHED


def test_an_unexpected_sink_exception_does_not_escape():
    sink = FakeSink(RuntimeError("bug in a sink"), RuntimeError("bug in a sink"))
    lc = lifecycle(sinks=[sink], delivery_attempts=2)
    assert lc.finish(study()).outcome is Outcome.DEAD_LETTERED


def test_dead_letter_unavailable_pauses_until_it_takes_the_record():
    dead = FakeDeadLetter(refusals=2)
    seen_paused = []
    waits = Waits()
    lc = lifecycle(dead_letter=dead, waits=lambda s: seen_paused.append(lc.paused) or waits(s))
    finished = lc.finish(study(error=StudyFailed("bad", "x", "1.2.3")))
    assert finished.outcome is Outcome.DEAD_LETTERED and seen_paused == [True, True] and not lc.paused
    assert len(dead.durable) == 2


def test_dead_letter_unavailable_at_shutdown_leaves_the_study_unacknowledged():
    lc = lifecycle(dead_letter=FakeDeadLetter(refusals=5), waits=Waits(allowed=1))
    assert lc.finish(study(error=StudyFailed("bad", "x", "1.2.3"))).outcome is Outcome.ABANDONED
    assert lc.paused and lc.assembler.finished_keys == []
