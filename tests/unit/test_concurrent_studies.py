"""Several studies processed at once (ConcurrentStudies): studies end in any order, the commit rule still never
passes an unfinished one, the bound holds, each study fails alone, sinks flush once per group. Fake stages,
real threads; every wait is an Event with a bounded timeout."""

from __future__ import annotations

import threading

import pytest

from oncostream.app.lifecycle import ConcurrentStudies, Outcome
from oncostream.errors import BackendUnavailable, StudyFailed
from oncostream.streaming import Watermark, lowest_offsets
from postprocess.errors import SinkError
from tests.unit.test_lifecycle import FakeDeadLetter, FakeSink, Waits, lifecycle, result_of, study

TIMEOUT_S = 10.0


def at(uid: str, *offsets: int):
    s = study(uid)
    s.sources = [("t", 0, o) for o in offsets]
    return s


class GatedPipeline:
    """process() blocks until the test opens the study's gate; records how many ran at once."""

    def __init__(self, failures: dict[str, list[Exception]] | None = None):
        self.gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}
        self.failures = failures or {}
        self.running = self.most_running = 0
        self._lock = threading.Lock()

    def gate(self, uid: str) -> threading.Event:
        self.started.setdefault(uid, threading.Event())
        return self.gates.setdefault(uid, threading.Event())

    def process(self, s):
        gate = self.gate(s.study_instance_uid)
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.started[s.study_instance_uid].set()
        try:
            if not gate.wait(TIMEOUT_S):
                raise AssertionError(f"gate of {s.study_instance_uid} never opened")
            queued = self.failures.get(s.study_instance_uid)
            if queued:
                raise queued.pop(0)
            return result_of(s)
        finally:
            with self._lock:
                self.running -= 1


class CountingSink(FakeSink):
    def __init__(self, *failures):
        super().__init__(*failures)
        self.flushes = 0

    def flush(self, timeout_s: float = 60.0):
        self.flushes += 1
        if self.failures:
            raise self.failures.pop(0)
        self.delivered.extend(u for u in self.added if u not in self.delivered)


def collect_until(processing: ConcurrentStudies, count: int) -> list:
    ended = []
    for _ in range(int(TIMEOUT_S / 0.05)):
        ended += processing.collect(timeout_s=0.05)
        if len(ended) >= count:
            return ended
    raise AssertionError(f"only {len(ended)} of {count} studies ended")


def test_results_in_any_order_never_let_the_commit_pass_an_unfinished_study():
    pipeline = GatedPipeline()
    lc = lifecycle(pipeline=pipeline)
    processing = ConcurrentStudies(lc, capacity=3)
    first, second, third = at("1", 10, 11), at("2", 12, 13), at("3", 14, 15)
    unfinished = [first, second, third]
    watermark = Watermark()
    for s in unfinished:
        for _, _, offset in s.sources:
            watermark.consumed(("t", 0), offset)
        processing.submit(s)

    def commit_now() -> int | None:
        """What the worker commits: min(lowest offset of an unfinished study, highest consumed + 1)."""
        offsets = watermark.to_commit(lowest_offsets(src for s in unfinished for src in s.sources))
        watermark.committed(offsets)
        return watermark.position(("t", 0))

    for uid in ("3", "2"):  # the later studies finish first
        pipeline.gate(uid).set()
        [(ended, finished)] = collect_until(processing, 1)
        assert finished.outcome is Outcome.PUBLISHED and ended.study_instance_uid == uid
        unfinished.remove(ended)
        assert commit_now() == 10, "the first study is unfinished: its first offset holds the commit"
    pipeline.gate("1").set()
    [(ended, _)] = collect_until(processing, 1)
    unfinished.remove(ended)
    assert commit_now() == 16
    processing.close()


def test_the_bound_holds_and_finish_waits_for_room():
    pipeline = GatedPipeline()
    processing = ConcurrentStudies(lifecycle(pipeline=pipeline), capacity=2)
    assert processing.finish(at("1", 1)) == [] and processing.finish(at("2", 2)) == []
    assert processing.full
    with pytest.raises(RuntimeError):
        processing.submit(at("x", 9))
    returned = threading.Event()
    ended = []
    caller = threading.Thread(target=lambda: (ended.extend(processing.finish(at("3", 3))), returned.set()))
    caller.start()
    assert pipeline.started["2"].wait(TIMEOUT_S)
    assert not returned.wait(0.3), "with every thread busy, finish() must wait (the caller stops reading)"
    pipeline.gate("1").set()
    assert returned.wait(TIMEOUT_S)
    caller.join(TIMEOUT_S)
    assert [s.study_instance_uid for s, _ in ended] == ["1"]
    pipeline.gate("2").set()
    pipeline.gate("3").set()
    assert {s.study_instance_uid for s, _ in processing.drain()} == {"2", "3"}
    assert pipeline.most_running == 2
    processing.close()


def test_a_failing_study_among_concurrent_ones_fails_alone():
    pipeline = GatedPipeline(failures={"2": [StudyFailed("processing_failed", "bad pixels", "2")],
                                       "3": [RuntimeError("a bug in a step")]})
    dead, sink = FakeDeadLetter(), CountingSink()
    processing = ConcurrentStudies(lifecycle(pipeline=pipeline, dead_letter=dead, sinks=[sink]), capacity=4)
    studies = [at("1", 1, 2), at("2", 3, 4), at("3", 5, 6), at("4", 7, 8)]
    for s in studies:
        processing.submit(s)
    for uid in ("1", "2", "3", "4"):
        pipeline.gate(uid).set()
    outcomes = {s.study_instance_uid: f for s, f in collect_until(processing, 4)}
    assert {u: f.outcome for u, f in outcomes.items()} == {"1": Outcome.PUBLISHED, "2": Outcome.DEAD_LETTERED,
                                                           "3": Outcome.DEAD_LETTERED, "4": Outcome.PUBLISHED}
    assert outcomes["3"].reason == "processing_failed"
    assert sorted(src for src, _ in dead.durable) == [("t", 0, 3), ("t", 0, 4), ("t", 0, 5), ("t", 0, 6)]
    assert sorted(sink.delivered) == ["1", "4"]
    processing.close()


def test_studies_that_end_together_share_one_flush():
    pipeline = GatedPipeline()
    sink = CountingSink()
    processing = ConcurrentStudies(lifecycle(pipeline=pipeline, sinks=[sink]), capacity=3)
    for uid in ("1", "2", "3"):
        processing.submit(at(uid, int(uid)))
        pipeline.gate(uid).set()
    for uid in ("1", "2", "3"):
        assert pipeline.started[uid].wait(TIMEOUT_S)
    while any(not f.done() for f in processing._running):
        threading.Event().wait(0.01)
    ended = processing.collect(timeout_s=0.0)
    assert len(ended) == 3 and sink.flushes == 1 and sorted(sink.delivered) == ["1", "2", "3"]
    processing.close()


class RefusingSink(CountingSink):
    """Refuses one study for good whenever it is pending at a flush (as a PACS refusing its objects does);
    discard() drops it, like the real sinks."""

    def __init__(self, refused: str):
        super().__init__()
        self.refused = refused
        self.pending: list[str] = []

    def add(self, result):
        super().add(result)
        self.pending.append(result.event.study_instance_uid)

    def flush(self, timeout_s: float = 60.0):
        self.flushes += 1
        if self.refused in self.pending:
            raise SinkError("pacs", "0xA900", permanent=True, studies=(self.refused,))
        self.delivered.extend(self.pending)
        self.pending = []

    def discard(self, uid):
        super().discard(uid)
        self.pending = [u for u in self.pending if u != uid]


def test_a_refusal_in_a_grouped_flush_dead_letters_only_the_study_it_names():
    pipeline = GatedPipeline()
    sink, dead = RefusingSink(refused="2"), FakeDeadLetter()
    processing = ConcurrentStudies(lifecycle(pipeline=pipeline, sinks=[sink], dead_letter=dead), capacity=3)
    for uid in ("1", "2", "3"):
        processing.submit(at(uid, int(uid)))
        pipeline.gate(uid).set()
    while sum(f.done() for f in processing._running) < 3:
        threading.Event().wait(0.01)
    ended = {s.study_instance_uid: f for s, f in processing.collect(timeout_s=0.0)}
    assert {u: f.outcome for u, f in ended.items()} == {"1": Outcome.PUBLISHED, "2": Outcome.DEAD_LETTERED,
                                                        "3": Outcome.PUBLISHED}
    assert ended["2"].reason == "delivery_refused" and [src for src, _ in dead.durable] == [("t", 0, 2)]
    assert sorted(sink.delivered) == ["1", "3"]
    processing.close()


def test_backend_unavailable_is_waited_out_on_the_callers_thread_then_resubmitted():
    pipeline = GatedPipeline(failures={"1": [BackendUnavailable("down", retry_after=0)]})
    waits = Waits()
    caller = threading.current_thread()
    waited_on = []
    lc = lifecycle(pipeline=pipeline, waits=lambda s: waited_on.append(threading.current_thread()) or waits(s))
    processing = ConcurrentStudies(lc, capacity=1)
    processing.submit(at("1", 1))
    pipeline.gate("1").set()
    [(s, finished)] = collect_until(processing, 1)
    assert finished.outcome is Outcome.PUBLISHED and waits.delays == [1]
    assert waited_on == [caller], "backoff (which polls the consumer) happens on the owner's thread only"
    processing.close()


def test_a_dropped_study_is_never_published_and_a_closed_one_is_late():
    pipeline = GatedPipeline()
    sink = CountingSink()
    processing = ConcurrentStudies(lifecycle(pipeline=pipeline, sinks=[sink]), capacity=2)
    revoked = at("1", 1)
    processing.submit(revoked)
    assert processing.processing("MG:1") and not processing.processing("MG:2")
    processing.drop(lambda s: s is revoked)
    assert not processing.processing("MG:1")
    pipeline.gate("1").set()
    assert processing.drain() == [] and sink.added == []
    processing.close()


def _of_patient(uid: str, patient_key: str, study_date: str):
    from pydicom import Dataset

    s = at(uid, int(uid))
    s.patient_key = patient_key
    s.datasets = [Dataset()]
    s.datasets[0].StudyDate = study_date
    return s


def test_studies_of_one_patient_run_one_at_a_time_earliest_round_first():
    """A patient's rounds streamed together: the later ones wait until the running one is published (so
    they find it in the results store as their prior), then start oldest study date first; another
    patient's study is not held back."""
    pipeline = GatedPipeline()
    for uid in "1234":
        pipeline.gate(uid)
    started = pipeline.started
    processing = ConcurrentStudies(lifecycle(pipeline=pipeline), capacity=3, backlog=1)
    processing.submit(_of_patient("1", "patient-a", "20260105"))
    assert started["1"].wait(TIMEOUT_S)
    processing.submit(_of_patient("2", "patient-a", "20250110"))
    processing.submit(_of_patient("3", "patient-a", "20240110"))
    processing.submit(_of_patient("4", "patient-b", "20240110"))
    assert started["4"].wait(TIMEOUT_S)
    assert len(processing) == 4 and processing.full
    assert not started["2"].is_set() and not started["3"].is_set()
    order = []
    for uid in ("1", "4", "3", "2"):
        pipeline.gate(uid).set()
        for ended, finished in collect_until(processing, 1):
            assert finished.outcome is Outcome.PUBLISHED
            order.append(ended.study_instance_uid)
        if uid == "1":  # the oldest waiting round of patient-a starts, the other still waits
            assert started["3"].wait(TIMEOUT_S) and not started["2"].is_set()
        if uid == "3":
            assert started["2"].wait(TIMEOUT_S)
    assert order == ["1", "4", "3", "2"] and pipeline.most_running <= 2 and len(processing) == 0
    processing.close()


def _with_pixels(uid: str, rows: int, columns: int, images: int):
    from pydicom.dataset import Dataset

    s = study(uid)
    for _ in range(images):
        ds = Dataset()
        ds.Rows, ds.Columns = rows, columns
        s.datasets.append(ds)
    return s


def test_studies_whose_pixels_exceed_the_budget_together_wait_in_order():
    """Two full-size LDCT series never process side by side: the second waits for the first, and a small
    exam submitted after it does not overtake it (else a stream of exams could starve the series); a study
    larger than the whole budget still runs, alone."""
    from oncostream.app.lifecycle import pixel_bytes

    pipeline = GatedPipeline()
    for uid in ("ct1", "ct2", "mg1", "huge"):
        pipeline.gate(uid)
    started = pipeline.started
    series = lambda uid: _with_pixels(uid, 512, 512, 160)  # noqa: E731
    assert pixel_bytes(series("x")) == 160 * 512 * 512 * 4
    processing = ConcurrentStudies(lifecycle(pipeline=pipeline), capacity=3, backlog=1,
                                   pixel_budget=256 * 1024 * 1024)
    processing.submit(series("ct1"))
    assert started["ct1"].wait(TIMEOUT_S)
    processing.submit(series("ct2"))
    processing.submit(_with_pixels("mg1", 2048, 1664, 4))
    # never handed to a thread (held in the waiting list), so checking at once is deterministic
    assert not started["ct2"].is_set() and not started["mg1"].is_set() and len(processing) == 3
    pipeline.gate("ct1").set()
    assert [s.study_instance_uid for s, _ in collect_until(processing, 1)] == ["ct1"]
    assert started["ct2"].wait(TIMEOUT_S) and started["mg1"].wait(TIMEOUT_S)  # 168 + 55 MB fit together
    pipeline.gate("ct2").set()
    pipeline.gate("mg1").set()
    collect_until(processing, 2)
    processing.submit(_with_pixels("huge", 512, 512, 600))
    assert started["huge"].wait(TIMEOUT_S)
    pipeline.gate("huge").set()
    collect_until(processing, 1)
    assert len(processing) == 0
    processing.close()
