"""The study lifecycle, written once: receive -> validate -> assemble -> process -> publish to every sink
-> acknowledge, with one failure policy.

`oncostream run`, `worker` and `gateway` differ only in their source, their dead-letter sink (the DLQ
topic, or `rejected.jsonl`) and how they acknowledge (nothing, a Kafka commit, a DIMSE status). Each
hands its assembled studies to ``StudyLifecycle.finish``, which ends every study in exactly one way:
published to every sink, dead-lettered with a reason covering every instance it was made of, or
abandoned unacknowledged at shutdown (replayed from Kafka or the gateway's spool). ``FAILURE_POLICY`` is
the whole policy; docs/RELIABILITY.md is its reading with the test that covers each row.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from enum import Enum
from pathlib import Path

from oncostream import memory, metrics
from oncostream.errors import BackendUnavailable, DeadLetterUnavailable, StudyFailed
from oncostream.settings import Settings
from oncostream.study import Study, StudyResult

log = logging.getLogger(__name__)


class Failure(str, Enum):
    BAD_INSTANCE = "bad_instance"  # parse, route or assembly refused one instance
    BAD_STUDY = "bad_study"  # assembly could not close it, or processing failed it
    BACKEND_UNAVAILABLE = "backend_unavailable"
    SINK_TRANSIENT = "sink_transient"  # a sink may accept later (network, broker, PACS busy)
    SINK_REFUSED = "sink_refused"  # a sink refused for good (SinkError.permanent)
    DEAD_LETTER_UNAVAILABLE = "dead_letter_unavailable"  # DLQ topic or rejection log refused a record
    NOT_DURABLE = "not_durable"  # the gateway could not make an instance durable (disk full, spool unwritable)
    LATE_INSTANCE = "late_instance"  # an instance of a study already published or dead-lettered
    ASSEMBLY_BOUND = "assembly_bound"  # pending studies, pending bytes or a study's age at its cap
    SHUTDOWN = "shutdown"


class Action(str, Enum):
    DEAD_LETTER = "dead-letter with the reason and every source of what failed"
    RETRY = "retry with exponential backoff; nothing it covers is acknowledged meanwhile"
    PAUSE = "pause: refuse or stop consuming new input, retry with backoff until it works"
    IGNORE = "ignore and log (the published result stands)"
    CLOSE_EARLY = "close the oldest pending study early, marked incomplete with the reason"
    ABANDON = "leave unacknowledged: replayed after restart"


@dataclass(frozen=True)
class Policy:
    action: Action
    dimse_status: int | None  # what the gateway answers the C-STORE this failure meets (PS3.4 B.2.3)


# PS3.4 B.2.3: 0xC000 "cannot understand" (resending will not help), 0xA700 "out of resources" (may clear)
STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES, STATUS_CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000

FAILURE_POLICY: dict[Failure, Policy] = {
    Failure.BAD_INSTANCE: Policy(Action.DEAD_LETTER, STATUS_CANNOT_UNDERSTAND),
    Failure.BAD_STUDY: Policy(Action.DEAD_LETTER, None),
    Failure.BACKEND_UNAVAILABLE: Policy(Action.RETRY, None),
    Failure.SINK_TRANSIENT: Policy(Action.RETRY, None),  # settings.delivery_attempts, then dead-letter
    Failure.SINK_REFUSED: Policy(Action.DEAD_LETTER, None),
    Failure.DEAD_LETTER_UNAVAILABLE: Policy(Action.PAUSE, STATUS_OUT_OF_RESOURCES),
    Failure.NOT_DURABLE: Policy(Action.PAUSE, STATUS_OUT_OF_RESOURCES),
    Failure.LATE_INSTANCE: Policy(Action.IGNORE, STATUS_SUCCESS),
    Failure.ASSEMBLY_BOUND: Policy(Action.CLOSE_EARLY, None),
    Failure.SHUTDOWN: Policy(Action.ABANDON, None),
}


class Outcome(str, Enum):
    PUBLISHED = "published"
    DEAD_LETTERED = "dead_lettered"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class Finished:
    outcome: Outcome
    result: StudyResult | None = None
    reason: str | None = None


def validate(data: bytes, settings: Settings):
    """Parse and route one received instance: (dataset, modality); RejectedInstance when unusable."""
    from ingest.decode import InstanceLimits, parse_instance, route

    with metrics.stage("parse", "any"):  # the modality is known once parsed
        ds = parse_instance(data, max_bytes=settings.max_instance_bytes, limits=InstanceLimits.from_settings(settings))
    return ds, route(ds)


def record_published(result: StudyResult) -> None:
    """Metrics once a study's outputs are durably published."""
    metrics.observe_published(result)  # outcome, latency by priority, publish time, model scores


class DeadLetter(ABC):
    """Where failed studies and rejected instances go, with a reason. add() then flush(), like a sink;
    flush() raises DeadLetterUnavailable until everything added is durable."""

    @abstractmethod
    def add_study(self, study: Study, reason: str, detail: str) -> None:
        """Dead-letter every instance the study was assembled from."""

    @abstractmethod
    def flush(self) -> None:
        """Make everything added durable, or raise DeadLetterUnavailable (and keep it for the next flush)."""


class RejectionLog(DeadLetter):
    """The file dead-letter sink: `rejected.jsonl`, one line per rejected instance (failed studies: one
    line per instance, each naming its origin). Lines are written and fsync'd by flush(); thread-safe
    (the gateway adds from its C-STORE threads and its pipeline thread)."""

    def __init__(self, path: Path, origin_of: Callable[[tuple], str] = str):
        self.path = Path(path)
        self.origin_of = origin_of  # source -> a file name or spool entry, for the line's `origin`
        self.count = 0
        self._lines: list[str] = []
        self._lock = threading.Lock()
        # surface an unwritable log at start, not at the first rejection (and create no empty file)
        if self.path.is_dir() or not os.access(self.path if self.path.exists() else self.path.parent, os.W_OK):
            raise DeadLetterUnavailable(f"cannot write the rejection log {self.path}")

    def add_instance(self, reason: str, detail: str, origin: str, uid: str | None) -> None:
        metrics.record(lambda: metrics.DLQ.labels(reason=reason).inc())
        line = json.dumps({"reason": reason, "detail": detail, "origin": origin, "uid": uid,
                           "at": datetime.now(timezone.utc).isoformat()})
        with self._lock:
            self.count += 1
            self._lines.append(line)

    def add_study(self, study: Study, reason: str, detail: str) -> None:
        study_uid = study.study_instance_uid
        if not study.sources:
            self.add_instance(reason, detail, "study", study_uid)
        for source in study.sources:
            self.add_instance(reason, detail, self.origin_of(source), study_uid)

    def flush(self) -> None:
        with self._lock:
            if not self._lines:
                return
            try:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write("".join(line + "\n" for line in self._lines))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                raise DeadLetterUnavailable(f"cannot write the rejection log {self.path}: {exc}") from exc
            self._lines.clear()


def backoff_delay(settings: Settings, attempt: int) -> float:
    """Exponential backoff: retry_initial_s * 2**attempt, capped at retry_max_s."""
    return min(settings.retry_initial_s * 2 ** min(attempt, 32), settings.retry_max_s)


class StudyLifecycle:
    """Process -> publish to every sink -> (caller acknowledges), under FAILURE_POLICY.

    ``wait(seconds)`` backs off the caller's way (the worker keeps polling paused partitions so it stays in
    its group) and returns False once the caller is shutting down. ``paused`` is True while the dead-letter
    sink is unavailable: the caller must not acknowledge new input meanwhile (the gateway answers 0xA700).
    """

    def __init__(self, settings: Settings, pipeline, sinks: list, dead_letter: DeadLetter,
                 wait: Callable[[float], bool], assembler=None):
        self.settings = settings
        self.pipeline = pipeline
        self.sinks = list(sinks)
        # delivery sinks (PACS) first, then those that announce the study triaged: a study dead-lettered because
        # a PACS stayed down is then never also on the triage topic or in triage.jsonl (Sink.announces_triage)
        self._sink_stages = [stage for stage in ([s for s in self.sinks if not getattr(s, "announces_triage", False)],
                                                 [s for s in self.sinks if getattr(s, "announces_triage", False)])
                             if stage]
        self.dead_letter = dead_letter
        self.wait = wait
        self.assembler = assembler  # told which studies are finished, so late instances are ignored
        self.paused = False

    def finish(self, study: Study) -> Finished:
        if study.error is not None:
            return self._dead_letter(study, study.error.reason, study.error.detail)
        attempt = 0
        while True:
            try:
                result = self.pipeline.process(study)
                break
            except BackendUnavailable as exc:
                delay = max(exc.retry_after, backoff_delay(self.settings, attempt))
                log.warning("backend unavailable (%s); retrying in %.0f s", exc, delay)
                if not self.wait(delay):
                    return Finished(Outcome.ABANDONED, reason=Failure.SHUTDOWN.value)
                attempt += 1
            except StudyFailed as exc:
                return self._dead_letter(study, exc.reason, exc.detail)
        return self._publish(study, result)

    def publish(self, done: list[tuple[Study, StudyResult]]) -> list[Finished]:
        """Publish several processed studies with one flush per sink stage instead of one per study.

        One study goes through ``_publish`` unchanged. When a grouped add or flush fails, the sinks discard
        the group and every study of it is published again alone under the per-study policy (re-adding
        resends idempotently, as any retry does): one study's refusal never dead-letters another, and no
        study loses one of its delivery attempts to the group.
        """
        if len(done) <= 1:
            return [self._publish(study, result) for study, result in done]
        try:
            for stage in self._sink_stages:
                for _study, result in done:
                    for sink in stage:
                        sink.add(result)
                for sink in stage:
                    sink.flush()
        except Exception as exc:  # noqa: BLE001 - each study is retried alone under the policy
            log.warning("grouped delivery of %d studies failed (%s: %s); publishing each alone", len(done),
                        type(exc).__name__, exc)
            # the sinks forget the group first, so that a failure met alone is that study's own
            for study, _result in done:
                self._discard(study)
            return [self._publish(study, result) for study, result in done]
        finished = []
        for study, result in done:
            record_published(result)
            self._finished(study)
            finished.append(Finished(Outcome.PUBLISHED, result=result))
        return finished

    def _publish(self, study: Study, result: StudyResult) -> Finished:
        from postprocess.errors import SinkError

        for attempt in range(self.settings.delivery_attempts):
            try:
                for stage in self._sink_stages:
                    for sink in stage:
                        sink.add(result)
                    for sink in stage:
                        sink.flush()
            except Exception as exc:  # noqa: BLE001 - no sink error may escape: each maps to a policy row
                error = exc if isinstance(exc, SinkError) else SinkError(
                    getattr(exc, "sink", "sink"), f"{type(exc).__name__}: {exc}")
                if isinstance(exc, SinkError) and error.permanent:
                    self._discard(study)
                    return self._dead_letter(study, "delivery_refused", str(error))
                if attempt + 1 >= self.settings.delivery_attempts:
                    self._discard(study)
                    return self._dead_letter(study, "delivery_failed", f"after {attempt + 1} attempts: {error}")
                delay = backoff_delay(self.settings, attempt)
                log.warning("delivery failed (%s); retrying in %.1f s", error, delay)
                if not self.wait(delay):
                    self._discard(study)
                    return Finished(Outcome.ABANDONED, reason=Failure.SHUTDOWN.value)
                continue
            record_published(result)
            self._finished(study)
            return Finished(Outcome.PUBLISHED, result=result)
        raise AssertionError("unreachable: the last attempt dead-letters")

    def _discard(self, study: Study) -> None:
        for sink in self.sinks:
            try:
                sink.discard(study.study_instance_uid)
            except Exception:  # noqa: BLE001 - a sink that cannot forget resends an idempotent result
                log.exception("sink %s could not discard a study", getattr(sink, "name", sink))

    def _dead_letter(self, study: Study, reason: str, detail: str) -> Finished:
        log.error("a %s study goes to the dead-letter sink: %s", study.modality, reason)
        metrics.record(lambda: metrics.STUDIES.labels(modality=study.modality, outcome="failed").inc())
        self.dead_letter.add_study(study, reason, detail)
        if not self.flush_dead_letter():
            return Finished(Outcome.ABANDONED, reason=Failure.SHUTDOWN.value)
        self._finished(study)
        return Finished(Outcome.DEAD_LETTERED, reason=reason)

    def flush_dead_letter(self) -> bool:
        """Flush the dead-letter sink, pausing (and retrying with backoff) while it refuses; False when the
        caller shut down first (what it covers stays unacknowledged)."""
        attempt = 0
        while True:
            try:
                self.dead_letter.flush()
                self.paused = False
                return True
            except (DeadLetterUnavailable, OSError) as exc:
                self.paused = True
                delay = backoff_delay(self.settings, attempt)
                log.error("dead-letter sink unavailable (%s); pausing, retrying in %.1f s", exc, delay)
                if not self.wait(delay):
                    return False
                attempt += 1

    def _finished(self, study: Study) -> None:
        if self.assembler is not None and study.assembly_key:
            self.assembler.finished(study.assembly_key)


@dataclass
class _Work:
    study: Study
    weight: int = 0  # pixel_bytes(study)
    attempt: int = 0  # backend-unavailable retries so far
    dropped: bool = False  # its source went away (partition revoked): the result is thrown away


def pixel_bytes(study: Study) -> int:
    """The study's pixels as float32, from its headers: what its working set in processing scales with
    (a full-size LDCT series ~170 MB, a full-size mammography exam ~50 MB)."""
    total = 0
    for ds in study.datasets:
        try:
            total += int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1) * 4
        except (AttributeError, TypeError, ValueError):
            continue
    return total


class ConcurrentStudies:
    """Up to ``capacity`` assembled studies processed at once, each on its own thread (decode,
    canonicalise, infer, SR/SEG: ``pipeline.process``), while the caller's thread keeps reading,
    validating and assembling the next ones. ONNX Runtime, DALI, NumPy and pydicom's decoders release the
    GIL, so one study's decoding overlaps another's inference.

    Everything else stays on the caller's thread, the one owner of offsets and acknowledgements:
    ``collect`` hands the studies that came back to ``StudyLifecycle`` (one grouped publish, or a dead
    letter, or a backoff wait and a resubmission under FAILURE_POLICY) and returns how each ended. Studies
    end in whatever order they finish; the caller must treat every submitted study as unfinished (held)
    until ``collect`` returns it. ``submit`` refuses beyond ``capacity`` + ``backlog``: the caller stops
    reading. The backlog (studies submitted, waiting for a thread) keeps the threads busy while the caller
    is away from ``collect`` (a Kafka poll that waits for records): only publishing waits for the caller.

    Studies of one patient (``Study.patient_key``) are processed one at a time, the earliest study date
    first: a study submitted while another of its patient is processing waits until that one is
    published, so a follow-up round streamed together with its prior (a backlog replay) finds the prior
    in the results store instead of being read as a baseline.

    Memory: the studies processing at once may hold at most ``pixel_budget`` bytes of pixels between them
    (``pixel_bytes``; 0: no budget). A study that does not fit waits, and no later study overtakes it, until
    enough have finished; one larger than the whole budget runs alone. So two full-size LDCT series are
    never decoded, denoised and segmented side by side, whatever ``capacity`` is.
    """

    def __init__(self, lifecycle: StudyLifecycle, capacity: int, backlog: int = 0, pixel_budget: int = 0):
        from concurrent.futures import ThreadPoolExecutor

        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity: must be an integer >= 1, got {capacity!r}")
        if not isinstance(backlog, int) or backlog < 0:
            raise ValueError(f"backlog: must be an integer >= 0, got {backlog!r}")
        self.lifecycle = lifecycle
        self.capacity = capacity
        self.backlog = backlog
        self.pixel_budget = pixel_budget
        memory.configure_allocator()
        self._pool = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="oncostream-study")
        self._running: dict = {}  # Future -> _Work
        self._waiting: list[_Work] = []  # held back while a study of the same patient processes

    def __len__(self) -> int:
        return len(self._running) + len(self._waiting)

    @property
    def full(self) -> bool:
        return len(self) >= self.capacity + self.backlog

    def _works(self) -> list[_Work]:
        return [*self._running.values(), *self._waiting]

    def holds(self, study: Study) -> bool:
        return any(work.study is study for work in self._works())

    def processing(self, assembly_key: str | None) -> bool:
        """True while a study of this assembly key is being processed: an instance of it arriving now is
        late (its study closed without it), like one arriving after the study was published."""
        return assembly_key is not None and any(w.study.assembly_key == assembly_key and not w.dropped
                                                for w in self._works())

    def submit(self, study: Study) -> None:
        if self.full:
            raise RuntimeError(f"{len(self._running)} studies already submitted (capacity {self.capacity}, "
                               f"backlog {self.backlog})")
        self._waiting.append(_Work(study, weight=pixel_bytes(study)))
        self._start_waiting()

    def _patient_processing(self, study: Study) -> bool:
        key = study.patient_key
        return key is not None and any(w.study.patient_key == key for w in self._running.values())

    def _fits(self, work: _Work) -> bool:
        in_use = sum(w.weight for w in self._running.values())
        return not self.pixel_budget or not self._running or in_use + work.weight <= self.pixel_budget

    def _start_waiting(self) -> None:
        """Start the held-back studies whose patient has nothing processing any more and whose pixels fit the
        budget, earliest study date first (an undated study last); one that does not fit stops the others
        behind it. Those whose source went away are forgotten."""
        self._waiting = [work for work in self._waiting if not work.dropped]
        for work in sorted(self._waiting, key=lambda w: w.study.study_date or date.max):
            if self._patient_processing(work.study):
                continue
            if not self._fits(work):
                break
            self._waiting.remove(work)
            self._start(work)

    def _start(self, work: _Work) -> None:
        future = self._pool.submit(self._process, work.study)
        self._running[future] = work

    def _process(self, study: Study):
        """On a processing thread: the pipeline's result, or the exception that decides the study's fate."""
        try:
            return self.lifecycle.pipeline.process(study)
        except (BackendUnavailable, StudyFailed) as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one study's failure must not stop the others
            log.exception("a %s study failed in processing", study.modality)
            return StudyFailed("processing_failed", f"{type(exc).__name__}: {exc}", study.study_instance_uid)
        finally:
            memory.release_freed_memory()  # the study's working set, freed on this thread's heap

    def drop(self, predicate: Callable[[Study], bool]) -> None:
        """Studies whose source went away (a revoked partition): their results will be thrown away."""
        for work in self._works():
            if predicate(work.study):
                work.dropped = True

    def collect(self, timeout_s: float = 0.0) -> list[tuple[Study, Finished]]:
        """Wait up to ``timeout_s`` for a study to come back, then finish every study that has: one grouped
        publish for the results, the dead-letter sink for failures, a backoff and a resubmission for a
        backend outage. Returns (study, how it ended); a study abandoned here (the caller is shutting down)
        is returned ABANDONED and must stay unacknowledged."""
        from concurrent.futures import FIRST_COMPLETED, wait

        if not self._running:
            self._start_waiting()
            return []
        done, _ = wait(list(self._running), timeout=max(timeout_s, 0.0), return_when=FIRST_COMPLETED)
        ended: list[tuple[Study, Finished]] = []
        results: list[tuple[Study, StudyResult]] = []
        retry: list[tuple[_Work, BackendUnavailable]] = []
        for future in done:
            work = self._running.pop(future)
            if work.dropped:
                continue
            value = future.result()
            if isinstance(value, BackendUnavailable):
                retry.append((work, value))
            elif isinstance(value, StudyFailed):
                ended.append((work.study, self.lifecycle._dead_letter(work.study, value.reason, value.detail)))
            else:
                results.append((work.study, value))
        if results:
            ended.extend(zip((study for study, _ in results), self.lifecycle.publish(results)))
        for work, exc in retry:
            delay = max(exc.retry_after, backoff_delay(self.lifecycle.settings, work.attempt))
            log.warning("backend unavailable (%s); retrying in %.0f s", exc, delay)
            if not self.lifecycle.wait(delay):
                ended.append((work.study, Finished(Outcome.ABANDONED, reason=Failure.SHUTDOWN.value)))
                continue
            if not work.dropped:
                work.attempt += 1
                self._waiting.append(work)
        self._start_waiting()
        return ended

    def finish(self, study: Study) -> list[tuple[Study, Finished]]:
        """Submit ``study`` (a study that failed assembly is dead-lettered at once), first collecting, and
        waiting for, as many studies as it takes to make room: the caller's backpressure."""
        ended = []
        if study.error is not None:
            return [(study, self.lifecycle._dead_letter(study, study.error.reason, study.error.detail))]
        while self.full:
            ended.extend(self.collect(timeout_s=1.0))
        self.submit(study)
        return ended

    def drain(self) -> list[tuple[Study, Finished]]:
        """Collect until nothing is processing."""
        ended = []
        while self._running or self._waiting:
            ended.extend(self.collect(timeout_s=1.0))
        return ended

    def close(self) -> None:
        """Stop: studies still processing are abandoned (their results are never published)."""
        for work in self._works():
            work.dropped = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._running.clear()
        self._waiting.clear()
