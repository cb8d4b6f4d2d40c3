"""`oncostream worker`: a Kafka consumer-group member driving the study lifecycle.

Poll, validate, assemble, then hand each completed study to `ConcurrentStudies` (processed on its own
thread while the loop keeps polling; published to every sink in groups, or dead-lettered whole, back on
the loop's thread), and only then commit. The commit rule is `Watermark` (oncostream.streaming):
a partition's committed offset never passes an instance whose study is unfinished or whose dead-letter
record the broker has not acknowledged. A crash replays unfinished studies; output UIDs are deterministic,
so replays republish identical results.
"""

from __future__ import annotations

import logging
import signal
import time
from datetime import datetime, timezone

from oncostream.app import health
from oncostream.app.lifecycle import ConcurrentStudies, DeadLetter, Outcome, StudyLifecycle, validate
from oncostream.errors import ClaimStoreUnavailable, NotScreened, ProcessFault, RejectedInstance
from oncostream.settings import Settings
from oncostream.streaming import (
    PublishedAhead,
    TopicPartitionKey,
    Watermark,
    lowest_offsets,
    make_producer,
    merge_lowest,
    quiet_kafka_client_logs,
)

log = logging.getLogger(__name__)

_COMMIT_INTERVAL_S = 1.0
_SHUTDOWN_TIMEOUT_S = 10.0


class _TopicDeadLetter(DeadLetter):
    """A failed study's instances to the DLQ topic: each held record with its reason and source offset."""

    def __init__(self, worker: Worker):
        self._worker = worker

    def add_study(self, study, reason: str, detail: str) -> None:
        for source in sorted(set(study.sources)):
            message = self._worker._held.get(source)
            if message is not None:
                self._worker.dlq.add(message, RejectedInstance(reason, detail))

    def flush(self) -> None:
        self._worker.dlq.flush()


class HeldMessages:
    """The raw records of unfinished studies, by source (topic, partition, offset): what a failed study's
    dead-letter records carry. Up to ``budget_bytes`` of record values stay in memory; a record held beyond
    it waits in the claim-check store instead (its value replaced by a claim check, as a producer would have
    sent it), so a large study still assembling costs its parsed datasets, not a second copy of every slice.
    Spilled objects are deleted with the commit that covers their published study (ClaimCheckResolver), or
    kept for the dead-letter record that points at them, until the store collects them by age."""

    def __init__(self, budget_bytes: int, resolver):
        self.budget_bytes = budget_bytes
        self._resolver = resolver
        self._messages: dict[tuple[str, int, int], object] = {}
        self._inline_bytes = 0
        self.spilled = 0  # records spilled so far (observability and tests)

    @staticmethod
    def _inline(message) -> int:
        from oncostream.contracts import CONTENT_TYPE_DICOM

        return len(message.data) if message.headers.get("content-type", CONTENT_TYPE_DICOM) == CONTENT_TYPE_DICOM \
            else 0

    def __len__(self) -> int:
        return len(self._messages)

    def __contains__(self, source) -> bool:
        return source in self._messages

    def __getitem__(self, source):
        return self._messages[source]

    def get(self, source, default=None):
        return self._messages.get(source, default)

    def values(self):
        return self._messages.values()

    @property
    def inline_bytes(self) -> int:
        return self._inline_bytes

    def hold(self, source, message) -> None:
        self.pop(source)
        if self._inline_bytes + self._inline(message) > self.budget_bytes:
            message = self._spill(source, message)
        self._messages[source] = message
        self._inline_bytes += self._inline(message)

    def _spill(self, source, message):
        from dataclasses import replace

        from oncostream.contracts import CONTENT_TYPE_CLAIM_CHECK
        from oncostream.errors import ClaimStoreUnavailable

        try:
            claim = self._resolver.store.write(message.data)
        except (ClaimStoreUnavailable, OSError) as exc:
            log.warning("claim store unavailable (%s); keeping a held record in memory", type(exc).__name__)
            return message
        self._resolver.track(source, claim)
        self.spilled += 1
        return replace(message, data=claim.model_dump_json().encode(),
                       headers={**message.headers, "content-type": CONTENT_TYPE_CLAIM_CHECK})

    def pop(self, source, default=None):
        message = self._messages.pop(source, None)
        if message is None:
            return default
        self._inline_bytes -= self._inline(message)
        return message

    def keep(self, wanted) -> None:
        """Forget every record whose source ``wanted(source)`` refuses."""
        for source in [s for s in self._messages if not wanted(s)]:
            self.pop(source)


def completing_partitions(assembling: dict[TopicPartitionKey, int],
                          assembled: dict[TopicPartitionKey, int]) -> set[TopicPartitionKey]:
    """Partitions whose oldest unfinished study is still assembling: its lowest held offset (``assembling``:
    lowest offset per partition of any study still assembling) comes before that of any assembled study
    waiting or processing (``assembled``). Reading on there completes it; anywhere else it would only
    start new studies."""
    return {tp for tp, offset in assembling.items() if offset < assembled.get(tp, offset + 1)}


class Worker:
    """One consumer-group member: poll, parse, assemble, finish studies, commit.

    One loop owns every offset: the commit rule is easiest to trust that way. Only `Pipeline.process`
    runs elsewhere, on `ConcurrentStudies`' threads; a study handed to them stays held (in `_queue`) until
    the loop collects it, in whatever order studies finish. (Rebalance callbacks run on kafka-python's I/O
    thread, but only while this loop is blocked in poll.)
    """

    def __init__(self, settings: Settings, bootstrap: str, topic: str, pipeline, sinks: list,
                 max_studies: int | None = None, producer=None):
        from ingest.assembly import Assembler
        from ingest.kafka_source import ClaimCheckResolver, KafkaDeadLetter, KafkaSource
        from oncostream.claim_store import claim_store_from_settings
        from postprocess.kafka_sink import KafkaSink

        self.settings = settings
        self.max_studies = max_studies
        self.published = 0
        self.dead_lettered = 0
        self.stopping = False
        self.assembler = Assembler(settings)
        self.watermark = Watermark()
        self.ahead = PublishedAhead()
        self._ahead_loaded: set[TopicPartitionKey] = set()
        self.resolver = ClaimCheckResolver(settings.max_instance_bytes, claim_store_from_settings(settings))
        self._published_sources: set[tuple[str, int, int]] = set()  # their claim-checked objects go at commit
        # not idempotent: kafka-python turns one non-retriable refusal (a record too large for its topic) into
        # a fatal state of an idempotent producer, failing every later record, dead-letter ones included;
        # one request in flight keeps retries in order, and consumers deduplicate replays by key and UID
        self._producer = producer or make_producer(bootstrap, client_id="oncostream-worker", settings=settings,
                                                   enable_idempotence=False, max_in_flight_requests_per_connection=1)
        self.dlq = KafkaDeadLetter(self._producer, settings.topic_dlq)
        self.sinks = [KafkaSink(self._producer, settings.topic_triage, settings.topic_results), *sinks]
        self.lifecycle = StudyLifecycle(settings, pipeline, self.sinks, _TopicDeadLetter(self), self._wait,
                                        assembler=self.assembler)
        self._queue: list = []  # completed studies not yet finished (waiting, or processing)
        # a backlog as deep as the threads: they keep working while the loop waits in poll
        self.processing = ConcurrentStudies(self.lifecycle, settings.max_studies_processing,
                                            backlog=settings.max_studies_processing,
                                            pixel_budget=settings.max_processing_pixel_bytes)
        self._held = HeldMessages(settings.max_held_bytes, self.resolver)  # records of unfinished studies
        self._unread: dict[TopicPartitionKey, int] = {}  # instances whose claim store could not be asked
        # partitions to read again before accepting anything from them: None = from the committed offset
        # (assigned after a revocation dropped their state), an offset = records polled but never accepted
        self._rewind: dict[TopicPartitionKey, int | None] = {}
        self._last_commit = time.monotonic()
        self.source = KafkaSource(bootstrap, topic, settings.consumer_group, settings=settings,
                                  on_revoked=self._on_revoked, on_assigned=self._on_assigned)

    # -- rebalance
    def _on_revoked(self, partitions: set[TopicPartitionKey]) -> None:
        """Send a last commit of what is finished, then forget the rest: the partitions' new owner replays it.

        Runs on kafka-python's I/O thread, hence the asynchronous commit; everything finished was already
        flushed and committed synchronously by the loop, so this only saves replays, never data.
        """
        try:
            # held offsets include unacknowledged dead-letter records, so this never passes one
            offsets = self.watermark.to_commit(self._held_offsets())
            if offsets:
                self.source.commit_async(offsets, self._commit_metadata(offsets))
        except Exception:  # noqa: BLE001 - the new owner replays from the last commit either way
            log.exception("commit on revoke failed; partitions will be replayed from the last commit")
        self.assembler.drop_partitions(partitions)
        revoked = lambda study: any((t, p) in partitions for t, p, _ in study.sources)  # noqa: E731
        self.processing.drop(revoked)
        self._queue = [s for s in self._queue if not revoked(s)]
        self._held.keep(lambda source: (source[0], source[1]) not in partitions)
        self.watermark.forget(partitions)
        for partition in partitions:
            self._rewind.pop(partition, None)
        self.ahead.forget(partitions)
        self._ahead_loaded -= set(partitions)

    def _on_assigned(self, partitions: set[TopicPartitionKey]) -> None:
        # A partition revoked and assigned back may keep the consumer's position past records of studies whose
        # state the revocation dropped (processing, queued or assembling): they must be read again, from the
        # committed offset, which never passes an unfinished study. The loop seeks after this poll returns.
        log.info("resuming %d partitions from their committed offsets", len(partitions))
        for partition in partitions:
            self._rewind[partition] = None

    # -- the loop
    def run(self) -> int:
        """Returns 0 when stopped or done; 1 when the loop met an error no policy row covers (logged,
        nothing committed past it)."""
        from oncostream import metrics

        status = 0
        try:
            while not self.stopping and not self._done():
                messages = self._rewound(self.source.poll(timeout_s=0.5))
                for message in messages:
                    self._accept(message)
                    if self.stopping:
                        break
                # a paused partition's next instances wait unread in Kafka: its studies are not quiet
                self.assembler.keep_alive(self.source.paused)
                self._queue.extend(self.assembler.expire())
                self._finish_queue()
                self._commit()
                self._apply_backpressure()
                metrics.record(metrics.IN_FLIGHT.set, len(self.assembler) + len(self._queue))
                metrics.record(metrics.observe_consumer_lag, self.source._consumer)
                health.beat()
        except Exception:  # noqa: BLE001 - the commit rule still holds: unfinished studies are replayed
            log.exception("worker loop failed; stopping without committing past unfinished studies")
            status = 1
        finally:
            self._shutdown()
        return status

    def _rewound(self, messages: list) -> list:
        """Seek the partitions marked for rewinding, dropping what this poll returned from them (read again)."""
        if not self._rewind:
            return messages
        rewind, self._rewind = self._rewind, {}
        for partition, offset in rewind.items():
            if partition in self.source.assignment():
                self.source.seek(partition, offset)
        return [m for m in messages if (m.topic, m.partition) not in rewind]

    def _done(self) -> bool:
        return self.max_studies is not None and self.published >= self.max_studies

    def _accept(self, message) -> None:
        from ingest.assembly import assembly_key
        from ingest.kafka_source import instance_bytes
        from oncostream import metrics

        source = (message.topic, message.partition, message.offset)
        self.watermark.consumed((message.topic, message.partition), message.offset)
        metrics.record(metrics.INSTANCES.inc)
        try:
            data = instance_bytes(message, self.resolver)
            metrics.record(metrics.INSTANCE_BYTES.inc, len(data))
            ds, modality = validate(data, self.settings)
        except (ClaimStoreUnavailable, ProcessFault):
            # an outage or a fault of this process says nothing about the instance: no commit may pass
            # it, and the loop stops (exit 1) so that the group reads it again from the committed offset
            self._unread = merge_lowest(self._unread, {(message.topic, message.partition): message.offset})
            raise
        except NotScreened:
            log.info("ignoring an instance no pipeline reads (%s)", message.origin)
            return
        except RejectedInstance as exc:
            log.warning("rejected an instance (%s): %s", message.origin, exc.reason)
            self._dead_letter(message, exc)
            return
        partition = (message.topic, message.partition)
        if partition not in self._ahead_loaded:
            self.ahead.load(partition, self.source.committed_metadata(partition))
            self._ahead_loaded.add(partition)
        key = assembly_key(ds, modality)
        if key is not None and self.ahead.already_published(partition, key, message.offset):
            log.info("skipping %s: its study was published before the last commit", message.origin)
            return
        if self.processing.processing(key):
            log.info("ignoring a late instance of a study already closed and processing (%s)", message.origin)
            return
        self._held.hold(source, message)
        program = message.headers.get("program") or None
        try:
            completed = self.assembler.add(ds, source=source, modality=modality, program=program,
                                           nbytes=len(data))
        except RejectedInstance as exc:
            self._held.pop(source, None)
            self._dead_letter(message, exc)
            return
        except Exception as exc:  # noqa: BLE001 - one odd instance must not stop the worker
            log.exception("cannot assemble %s", message.origin)
            self._held.pop(source, None)
            self._dead_letter(message, RejectedInstance("assembly_failed", f"{type(exc).__name__}: {exc}"))
            return
        self._queue.extend(completed)

    def _dead_letter(self, message, exc: RejectedInstance) -> None:
        from oncostream import metrics

        self.dlq.add(message, exc)
        metrics.record(lambda: metrics.DLQ.labels(reason=exc.reason).inc())

    def _finish_queue(self) -> None:
        """Hand waiting studies to the processing threads while there is room, then finish those that came
        back, in whatever order they did. A study the lifecycle abandons (shutdown) stays queued, held."""
        for study in [s for s in self._queue if not self.processing.holds(s)]:
            if self.processing.full or self.stopping or self._enough_in_flight():
                break
            study.arrived_at = self._arrival(study)
            if study.error is not None:  # failed assembly: dead-lettered at once, never processed
                self._ended(study, self.lifecycle.finish(study))
                continue
            self.processing.submit(study)
        finished = 0
        for study, outcome in self.processing.collect(timeout_s=0.0):
            finished += self._ended(study, outcome)
        if finished:
            log.info("finished %d studies (%d published in total)", finished, self.published)
            self._commit(force=True)

    def _enough_in_flight(self) -> bool:
        """With --max-studies, start no more studies than could still be needed to reach it."""
        return self.max_studies is not None and self.published + len(self.processing) >= self.max_studies

    def _ended(self, study, outcome) -> int:
        if not any(s is study for s in self._queue) or outcome.outcome is Outcome.ABANDONED:
            # revoked while it was processed (the new owner replays it), or abandoned at shutdown: held
            return 0
        self._queue = [s for s in self._queue if s is not study]
        # finished either way: a replay from an earlier commit must not assemble its tail again
        self.ahead.published(study.assembly_key, study.sources)
        if outcome.outcome is Outcome.PUBLISHED:
            self._published_sources.update(study.sources)
            self.published += 1
        else:
            self.dead_lettered += 1
        self._release(study)
        return 1

    def _arrival(self, study) -> datetime:
        """When the study's first instance reached Kafka: the same on every replay, unlike wall time."""
        stamps = [self._held[s].timestamp_ms for s in study.sources if s in self._held and self._held[s].timestamp_ms]
        if not stamps:
            return study.arrived_at
        return datetime.fromtimestamp(min(stamps) / 1000, tz=timezone.utc)

    def _release(self, study) -> None:
        for source in study.sources:
            self._held.pop(source, None)

    def _held_offsets(self) -> dict[TopicPartitionKey, int]:
        """Lowest offset per partition of any study not yet finished (assembling or queued), of any
        instance whose dead-letter record is not acknowledged yet, and of any the claim store could not give."""
        return merge_lowest(self._unread, self.assembler.pending_offsets(), self._queued_offsets(),
                            self.dlq.pending_offsets())

    def _queued_offsets(self) -> dict[TopicPartitionKey, int]:
        """Lowest offset per partition of any assembled study not yet finished (waiting or processing)."""
        return lowest_offsets(s for study in self._queue for s in study.sources)

    def _commit(self, force: bool = False, timeout_s: float = 60.0) -> None:
        from oncostream.errors import DeadLetterUnavailable

        if not force and time.monotonic() - self._last_commit < _COMMIT_INTERVAL_S:
            return
        self._last_commit = time.monotonic()
        try:
            self.dlq.flush(timeout_s)  # a dead-lettered instance counts as done only once the DLQ acknowledged it
        except DeadLetterUnavailable as exc:
            log.error("dead-letter topic unavailable (%s); offsets stay before its records", exc)
        offsets = self.watermark.to_commit(self._held_offsets(), refresh=self.ahead.changed)
        if not offsets:
            return
        try:
            self.source.commit(offsets, self._commit_metadata(offsets), timeout_s=min(timeout_s, 30.0))
        except Exception as exc:  # noqa: BLE001 - an uncommitted offset means a replay, never a loss
            log.warning("commit failed, retrying with the next commit: %s: %s", type(exc).__name__, exc)
            return
        self.watermark.committed(offsets)
        self.ahead.committed(offsets)
        # claim-checked objects of committed, published studies are deleted; dead-lettered ones are kept
        # (their dead-letter records point at them) until the store collects them by age
        self.resolver.committed(offsets, self._published_sources)
        self._published_sources = {s for s in self._published_sources if s[2] >= offsets.get((s[0], s[1]), -1)}
        # messages below a committed offset belong to no unfinished study (ignored views, localizers)
        self._held.keep(lambda source: source[2] >= offsets.get((source[0], source[1]), -1))
        log.debug("committed %s", offsets)

    def _commit_metadata(self, offsets: dict[TopicPartitionKey, int]) -> dict[TopicPartitionKey, str]:
        return {partition: self.ahead.metadata(partition, offset) for partition, offset in offsets.items()}

    def _apply_backpressure(self) -> None:
        """Bound in-flight studies by pausing partitions instead of buffering; pause everything while the
        dead-letter topic refuses records (FAILURE_POLICY: dead-letter sink unavailable -> pause).

        At the bound, only partitions whose oldest unfinished study is still assembling keep flowing:
        pausing those would starve the very studies whose completion frees capacity (a study lives on one
        partition), while reading on behind an assembled one only starts new studies: in a backlog every
        partition always holds an unfinished study, and the worker read (and held) the whole backlog.
        A study left part-read on a paused partition is not quiet (run: Assembler.keep_alive).
        """
        if self.dlq.failing:
            if self.source.assignment() - self.source.paused:
                log.warning("dead-letter records not acknowledged: pausing consumption")
            self.source.pause()
            return
        in_flight = len(self.assembler) + len(self._queue)
        if in_flight >= self.settings.max_in_flight_studies:
            completing = completing_partitions(self.assembler.pending_offsets(), self._queued_offsets())
            # a partition with instances to read again (claim store unavailable) must flow to complete them
            idle = self.source.assignment() - completing - set(self._unread)
            if idle - self.source.paused:
                log.info("%d studies in flight: pausing %d partitions", in_flight, len(idle))
            self.source.pause_only(idle)
        elif self.source.paused:
            log.info("%d studies in flight: resuming consumption", in_flight)
            self.source.resume()

    def _wait(self, seconds: float) -> bool:
        """Back off without leaving the group: poll paused partitions (heartbeats continue). False once
        stopping, which tells the lifecycle to abandon (leave unacknowledged) what it was retrying."""
        self.source.pause()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stopping:
            unread = self.source.poll(timeout_s=min(0.5, max(deadline - time.monotonic(), 0.0)))
            # a rebalance meanwhile unpauses: records polled here are not accepted, so read them again later
            for message in unread:
                partition = (message.topic, message.partition)
                if partition not in self._rewind:
                    self._rewind[partition] = message.offset
                elif self._rewind[partition] is not None:
                    self._rewind[partition] = min(self._rewind[partition], message.offset)
            if self.source.assignment() - self.source.paused:
                self.source.pause()
        # every partition was paused: nothing assembling went quiet meanwhile (Assembler.keep_alive)
        self.assembler.keep_alive(self.source.assignment())
        self.source.resume()
        return not self.stopping

    def _shutdown(self) -> None:
        """Commit what was finished; abandon (do not commit) anything still assembling or queued."""
        try:
            if self._queue or len(self.assembler):
                log.info("stopping with %d studies unfinished; they will be replayed",
                         len(self._queue) + len(self.assembler))
            # bounded, so that SIGTERM ends the process within an orchestrator's grace period
            self._commit(force=True, timeout_s=_SHUTDOWN_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - nothing committed means a replay, never a loss
            log.exception("final commit failed; uncommitted studies will be replayed")
        finally:
            self.processing.close()
            self.source.close()
            for sink in self.sinks[1:]:
                sink.close()
            self._producer.close(timeout=_SHUTDOWN_TIMEOUT_S)

    def stop(self, *_args) -> None:
        self.stopping = True


def main_worker(args) -> int:
    """`oncostream worker --bootstrap HOST:PORT [--topic T] [--triton HOST:PORT] [--max-studies N] [--out DIR]`."""
    from oncostream import metrics
    from oncostream.app.pipeline import Pipeline, delivery_sinks, make_backend

    quiet_kafka_client_logs()
    health.configure(args.health_file)
    settings = Settings()
    settings = settings.model_copy(update={"kafka_bootstrap": args.bootstrap})
    if args.triton:
        settings = settings.model_copy(update={"backend": "triton", "triton_url": args.triton})
    if args.metrics_port is not None:
        log.info("metrics on port %d", metrics.serve(args.metrics_port))
    sinks = []
    if args.out is not None:
        from postprocess.file_sink import FileSink

        sinks.append(FileSink(args.out))
    # PACS (C-STORE / STOW-RS) and FHIR when the settings name them, and the results store
    sinks.extend(delivery_sinks(settings, files_dir=args.out))
    backend = make_backend(settings)
    worker = Worker(settings, args.bootstrap, args.topic or settings.topic_dicom, Pipeline(settings, backend),
                    sinks, max_studies=args.max_studies)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    try:
        status = worker.run()
    finally:
        backend.close()
    log.info("worker stopped after publishing %d studies (%d dead-lettered)", worker.published,
             worker.dead_lettered)
    return status
