"""`oncostream produce` and `oncostream worker`: DICOM through a real Kafka, at least once, idempotent.

Producer: one record per instance, key = StudyInstanceUID (so a study stays on one partition, in
order), headers content-type / program / trace-id; inline up to `settings.inline_limit_bytes`, a claim
check above it.

Worker: a consumer-group member that parses, assembles per study, runs the pipeline, publishes to every
sink, and only then commits. The commit rule lives in one place, `Watermark`: a partition's committed
offset is min(lowest offset held by a study not yet published, highest consumed + 1). A crash replays
unfinished studies; output UIDs are deterministic, so replays republish identical results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

from oncostream.contracts import CONTENT_TYPE_CLAIM_CHECK, CONTENT_TYPE_DICOM, ClaimCheck
from oncostream.errors import OncostreamError
from oncostream.settings import Settings

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]
# a message may be above the inline limit only as a claim check; this caps a single request
_MAX_REQUEST_BYTES = 64 * 1024 * 1024
_COMMIT_INTERVAL_S = 1.0
_SHUTDOWN_TIMEOUT_S = 10.0


def compression_type() -> str:
    """lz4 when its Python package is installed (fast), otherwise gzip (always available)."""
    from kafka.codec import has_lz4

    return "lz4" if has_lz4() else "gzip"


def make_producer(bootstrap: str, client_id: str, **overrides):
    """A KafkaProducer that waits for all in-sync replicas and never reorders or duplicates on retry."""
    from kafka import KafkaProducer

    config = dict(bootstrap_servers=bootstrap, client_id=client_id, acks="all", enable_idempotence=True,
                  compression_type=compression_type(), linger_ms=20, batch_size=1024 * 1024,
                  max_request_size=_MAX_REQUEST_BYTES, request_timeout_ms=60_000, max_block_ms=120_000)
    config.update(overrides)
    return KafkaProducer(**config)


def _quiet_kafka_client_logs() -> None:
    """kafka-python logs every connection at INFO; only its warnings matter to an operator."""
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("kafka").setLevel(logging.WARNING)


# --------------------------------------------------------------------------------------------- watermark

class Watermark:
    """Per-partition commit positions under the at-least-once rule (pure bookkeeping, no Kafka).

    `consumed()` is told every offset the worker has taken responsibility for; `to_commit(held)`
    gets, per partition, the lowest offset still held by an unpublished study and answers what may be
    committed now: min(held, highest consumed + 1), only where that moves the committed offset forward.
    """

    def __init__(self) -> None:
        self._next: dict[TopicPartitionKey, int] = {}
        self._committed: dict[TopicPartitionKey, int] = {}

    def consumed(self, partition: TopicPartitionKey, offset: int) -> None:
        if offset < 0:
            raise ValueError(f"offset: must be >= 0, got {offset}")
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def to_commit(self, held: dict[TopicPartitionKey, int],
                  refresh: Iterable[TopicPartitionKey] = ()) -> dict[TopicPartitionKey, int]:
        """Offsets to commit now; partitions in `refresh` are included even where the offset stays put
        (their commit metadata changed, see PublishedAhead)."""
        refresh = set(refresh)
        offsets = {}
        for partition, next_offset in self._next.items():
            target = min(held.get(partition, next_offset), next_offset)
            committed = self._committed.get(partition, -1)
            if target > committed or (partition in refresh and target >= committed):
                offsets[partition] = target
        return offsets

    def committed(self, offsets: dict[TopicPartitionKey, int]) -> None:
        """Record offsets the broker accepted."""
        for partition, offset in offsets.items():
            self._committed[partition] = max(offset, self._committed.get(partition, -1))

    def position(self, partition: TopicPartitionKey) -> int | None:
        """The last committed offset of a partition, None before the first commit."""
        return self._committed.get(partition)

    def forget(self, partitions: Iterable[TopicPartitionKey]) -> None:
        """Rebalance: revoked partitions are another member's now; their state restarts on reassignment."""
        for partition in partitions:
            self._next.pop(partition, None)
            self._committed.pop(partition, None)


class PublishedAhead:
    """Studies already published that have instances at or beyond their partition's committed offset.

    Without this, a replay from the committed offset (after a crash or a rebalance) would re-assemble the
    tail of such a study, close it incomplete at the quiet timeout and publish a second, different result.
    The record travels with the commit itself (Kafka's offset-commit metadata), so whichever member owns the
    partition next skips those instances. Keys are hashed: short, and free of identifiers.
    """

    MAX_METADATA_BYTES = 4096  # the broker's default offset.metadata.max.bytes

    def __init__(self) -> None:
        self._last: dict[TopicPartitionKey, dict[str, int]] = {}  # partition -> hashed key -> highest offset
        self.changed: set[TopicPartitionKey] = set()  # partitions whose metadata is newer than the last commit

    @staticmethod
    def _hash(assembly_key: str) -> str:
        return hashlib.sha256(assembly_key.encode()).hexdigest()[:16]

    def published(self, assembly_key: str, sources: Iterable[tuple[str, int, int]]) -> None:
        for topic, partition, offset in sources:
            entries = self._last.setdefault((topic, partition), {})
            key = self._hash(assembly_key)
            entries[key] = max(offset, entries.get(key, -1))
            self.changed.add((topic, partition))

    def already_published(self, partition: TopicPartitionKey, assembly_key: str, offset: int) -> bool:
        return offset <= self._last.get(partition, {}).get(self._hash(assembly_key), -1)

    def metadata(self, partition: TopicPartitionKey, commit_offset: int) -> str:
        """The commit metadata for `partition` at `commit_offset`: entries wholly below it are left out."""
        entries = {k: o for k, o in self._last.get(partition, {}).items() if o >= commit_offset}
        text = json.dumps(entries, separators=(",", ":"), sort_keys=True) if entries else ""
        if len(text) > self.MAX_METADATA_BYTES:
            log.warning("%d studies published ahead of the commit on %s: too many to record; a replay may "
                        "re-assemble some of them", len(entries), partition)
            return ""
        return text

    def committed(self, offsets: dict[TopicPartitionKey, int]) -> None:
        """After a successful commit: entries wholly below the committed offset are needed no more."""
        for partition, offset in offsets.items():
            entries = self._last.get(partition, {})
            self._last[partition] = {k: o for k, o in entries.items() if o >= offset}
            self.changed.discard(partition)

    def load(self, partition: TopicPartitionKey, metadata: str | None) -> None:
        if not metadata:
            return
        try:
            entries = {str(k): int(v) for k, v in json.loads(metadata).items()}
        except (ValueError, TypeError, AttributeError):
            log.warning("ignoring unreadable commit metadata on %s", partition)
            return
        mine = self._last.setdefault(partition, {})
        for key, offset in entries.items():
            mine[key] = max(offset, mine.get(key, -1))

    def forget(self, partitions: Iterable[TopicPartitionKey]) -> None:
        for partition in partitions:
            self._last.pop(partition, None)
            self.changed.discard(partition)


def lowest_offsets(sources: Iterable[tuple[str, int, int]]) -> dict[TopicPartitionKey, int]:
    """The lowest offset per partition among (topic, partition, offset) triples."""
    low: dict[TopicPartitionKey, int] = {}
    for topic, partition, offset in sources:
        key = (topic, partition)
        low[key] = min(offset, low.get(key, offset))
    return low


def merge_lowest(*maps: dict[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
    merged: dict[TopicPartitionKey, int] = {}
    for m in maps:
        for key, offset in m.items():
            merged[key] = min(offset, merged.get(key, offset))
    return merged


# --------------------------------------------------------------------------------------------- producer

class ProduceError(OncostreamError):
    """The broker did not acknowledge every record; the caller may produce again (keys make it idempotent
    for consumers, and output UIDs are deterministic)."""


@dataclass
class ProduceReport:
    instances: int = 0
    studies: int = 0
    bytes: int = 0
    claim_checks: int = 0
    seconds: float = 0.0
    trace_ids: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID -> trace-id

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def study_key(data: bytes) -> str | None:
    """StudyInstanceUID of Part 10 bytes, or None when the header cannot be read (sent unkeyed)."""
    import pydicom

    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        uid = str(ds.get("StudyInstanceUID", "") or "")
        return uid or None
    except Exception:  # noqa: BLE001 - a malformed file is still produced; the worker dead-letters it
        return None


def write_claim_check(data: bytes, claim_dir: Path) -> ClaimCheck:
    """Store `data` under its SHA-256 in `claim_dir` (content-addressed: rewriting is harmless), 0600 in a
    0700 directory (oncostream.claim_store.ClaimStore)."""
    from oncostream.claim_store import ClaimStore

    return ClaimStore(claim_dir).write(data)


def instance_files(path: Path) -> list[Path]:
    """The files `oncostream produce PATH` sends: PATH itself, or what the directory source reads under it."""
    if path.is_file():
        return [path]
    from ingest.directory import DirectorySource

    return DirectorySource(path).paths()


def produce_files(paths: Iterable[Path], settings: Settings, bootstrap: str, topic: str | None = None,
                  program: str | None = None, progress: bool = False, producer=None) -> ProduceReport:
    """Produce DICOM files, one study's instances after another (contiguous within a partition)."""
    topic = topic or settings.topic_dicom
    program = program or settings.program
    paths = list(paths)
    keyed: dict[str | None, list[tuple[Path, bytes]]] = {}
    for path in paths:
        data = path.read_bytes()
        keyed.setdefault(study_key(data), []).append((path, data))
    total = sum(len(items) for items in keyed.values())
    own_producer = producer is None
    producer = producer or make_producer(bootstrap, client_id="oncostream-producer")
    report = ProduceReport()
    futures = []
    started = time.monotonic()
    bar = _ProgressBar(total, enabled=progress)
    try:
        for key, items in keyed.items():
            trace_id = uuid.uuid4().hex
            if key is not None:
                report.trace_ids[key] = trace_id
                report.studies += 1
            for _path, data in items:
                headers = {"content-type": CONTENT_TYPE_DICOM, "program": program, "trace-id": trace_id}
                value = data
                if len(data) > settings.inline_limit_bytes:
                    value = write_claim_check(data, settings.claim_check_dir).model_dump_json().encode()
                    headers["content-type"] = CONTENT_TYPE_CLAIM_CHECK
                    report.claim_checks += 1
                futures.append(producer.send(topic, key=key.encode() if key else None, value=value,
                                             headers=[(k, v.encode()) for k, v in headers.items()]))
                report.instances += 1
                report.bytes += len(data)
                bar.advance(len(data))
        producer.flush()
        failed = [f.exception for f in futures if not f.is_done or f.failed()]
        if failed:
            raise ProduceError(f"{len(failed)} of {len(futures)} records were not acknowledged: {failed[0]}")
    finally:
        bar.close()
        if own_producer:
            producer.close()
    report.seconds = time.monotonic() - started
    return report


class _ProgressBar:
    def __init__(self, total: int, enabled: bool):
        self._progress = None
        if enabled:
            from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TransferSpeedColumn)

            self._progress = Progress(TextColumn("producing"), BarColumn(), MofNCompleteColumn(),
                                      DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
            self._instances = self._progress.add_task("instances", total=total)
            self._progress.start()

    def advance(self, nbytes: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._instances)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def main_produce(args) -> int:
    """`oncostream produce PATH | --synth N --bootstrap HOST:PORT [--topic T]`."""
    from rich.console import Console

    _quiet_kafka_client_logs()
    console = Console()
    settings = Settings()
    workdir = None
    if args.synth is not None:
        from oncostream.synth.command import write_studies

        if args.synth < 1:
            raise SystemExit("--synth: N must be at least 1")
        workdir = Path(tempfile.mkdtemp(prefix="oncostream-produce-"))
        mammo, ldct = (args.synth + 1) // 2, args.synth // 2
        console.print(f"synthesising {mammo} mammography exams and {ldct} LDCT series ({args.size}, "
                      f"seed {args.seed})")
        write_studies(workdir, mammo=mammo, ldct=ldct, seed=args.seed, size=args.size)
        path = workdir
    else:
        path = args.path
        if not path.exists():
            raise SystemExit(f"{path}: no such file or directory")
    try:
        report = produce_files(instance_files(path), settings, args.bootstrap, topic=args.topic, program=args.program,
                               progress=console.is_terminal)
    finally:
        if workdir is not None:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    console.print(f"produced {report.instances} instances of {report.studies} studies "
                  f"({report.bytes / 1e6:.1f} MB, {report.claim_checks} by claim check) to "
                  f"{args.topic or settings.topic_dicom} in {report.seconds:.2f} s: "
                  f"{report.instances_per_s:.1f} instances/s, {report.mb_per_s:.1f} MB/s")
    return 0


# --------------------------------------------------------------------------------------------- worker

class Worker:
    """One consumer-group member: poll, parse, assemble, process, publish, flush, commit.

    Single-threaded on purpose: the commit rule is easiest to trust when one loop owns every offset.
    (Rebalance callbacks run on kafka-python's I/O thread, but only while this loop is blocked in poll.)
    """

    def __init__(self, settings: Settings, bootstrap: str, topic: str, pipeline, sinks: list,
                 max_studies: int | None = None):
        from ingest.assembly import Assembler
        from ingest.kafka_source import ClaimCheckResolver, KafkaDeadLetter, KafkaSource

        self.settings = settings
        self.pipeline = pipeline
        self.max_studies = max_studies
        self.published = 0
        self.stopping = False
        self.assembler = Assembler(settings)
        self.watermark = Watermark()
        self.ahead = PublishedAhead()
        self._ahead_loaded: set[TopicPartitionKey] = set()
        from oncostream.claim_store import ClaimStore

        self.resolver = ClaimCheckResolver(settings.max_instance_bytes,
                                           ClaimStore(settings.claim_check_dir, settings.claim_check_max_age_s))
        self._producer = make_producer(bootstrap, client_id="oncostream-worker")
        self.dlq = KafkaDeadLetter(self._producer, settings.topic_dlq)
        from postprocess.kafka_sink import KafkaSink

        self.sinks = [KafkaSink(self._producer, settings.topic_triage, settings.topic_results), *sinks]
        self._queue: list = []  # completed studies not yet published
        self._held: dict[tuple[str, int, int], object] = {}  # messages of unpublished studies, by source
        self._last_commit = time.monotonic()
        self._unflushed = False  # records handed to a sink or the DLQ and not yet flushed
        self.source = KafkaSource(bootstrap, topic, settings.consumer_group,
                                  on_revoked=self._on_revoked, on_assigned=self._on_assigned)

    # -- rebalance
    def _on_revoked(self, partitions: set[TopicPartitionKey]) -> None:
        """Send a last commit of what is published, then forget the rest: the partitions' new owner replays it.

        Runs on kafka-python's I/O thread, hence the asynchronous commit; everything published was already
        flushed and committed synchronously by the loop, so this only saves replays, never data.
        """
        try:
            offsets = self.watermark.to_commit(self._held_offsets())
            if offsets and not self._unflushed:
                self.source.commit_async(offsets, self._commit_metadata(offsets))
        except Exception:  # noqa: BLE001 - the new owner replays from the last commit either way
            log.exception("commit on revoke failed; partitions will be replayed from the last commit")
        self.assembler.drop_partitions(partitions)
        self._queue = [s for s in self._queue if not any((t, p) in partitions for t, p, _ in s.sources)]
        self._held = {k: v for k, v in self._held.items() if (k[0], k[1]) not in partitions}
        self.watermark.forget(partitions)
        self.ahead.forget(partitions)
        self._ahead_loaded -= set(partitions)

    def _on_assigned(self, partitions: set[TopicPartitionKey]) -> None:
        # the consumer resumes from each partition's committed offset by itself; nothing is paused now
        log.info("resuming %d partitions from their committed offsets", len(partitions))

    # -- the loop
    def run(self) -> int:
        from oncostream import metrics

        try:
            while not self.stopping and not self._done():
                messages = self.source.poll(timeout_s=0.5)
                for message in messages:
                    self._accept(message)
                    if self.stopping:
                        break
                self._queue.extend(self.assembler.expire())
                self._publish_queue()
                self._commit()
                self._apply_backpressure()
                metrics.record(metrics.IN_FLIGHT.set, len(self.assembler) + len(self._queue))
        finally:
            self._shutdown()
        return 0

    def _done(self) -> bool:
        return self.max_studies is not None and self.published >= self.max_studies

    def _accept(self, message) -> None:
        from ingest.assembly import assembly_key
        from ingest.decode import parse_instance, route
        from ingest.kafka_source import instance_bytes
        from oncostream import metrics
        from oncostream.errors import RejectedInstance

        source = (message.topic, message.partition, message.offset)
        self.watermark.consumed((message.topic, message.partition), message.offset)
        metrics.record(metrics.INSTANCES.inc)
        try:
            data = instance_bytes(message, self.resolver)
            metrics.record(metrics.INSTANCE_BYTES.inc, len(data))
            ds = parse_instance(data, max_bytes=self.settings.max_instance_bytes)
            modality = route(ds)
        except RejectedInstance as exc:
            log.warning("rejected %s (%s): %s", exc.sop_instance_uid or "instance", message.origin, exc.reason)
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
        self._held[source] = message
        program = message.headers.get("program") or None
        try:
            completed = self.assembler.add(ds, source=source, modality=modality, program=program)
        except Exception as exc:  # noqa: BLE001 - one odd instance must not stop the worker
            log.exception("cannot assemble %s", message.origin)
            self._held.pop(source, None)
            self._dead_letter(message, RejectedInstance("assembly_failed", f"{type(exc).__name__}: {exc}",
                                                        str(ds.get("SOPInstanceUID", "")) or None))
            return
        self._queue.extend(completed)

    def _dead_letter(self, message, exc) -> None:
        from oncostream import metrics

        self.dlq.add(message, exc)
        self._unflushed = True
        metrics.record(lambda: metrics.DLQ.labels(reason=exc.reason).inc())

    def _publish_queue(self) -> None:
        """Process and hand every completed study to every sink; flush all before anything is committed."""
        from oncostream.errors import BackendUnavailable, RejectedInstance, StudyFailed
        from oncostream.pipeline import record_published

        published = []
        while self._queue and not self.stopping:
            study = self._queue[0]
            study.arrived_at = self._arrival(study)
            try:
                result = self.pipeline.process(study)
            except BackendUnavailable as exc:
                log.warning("backend unavailable, retrying in %.0f s: %s", exc.retry_after, exc)
                self._wait(exc.retry_after)
                continue
            except StudyFailed as exc:
                log.error("study %s failed: %s", exc.study_instance_uid, exc.reason)
                for source in sorted(set(study.sources)):
                    message = self._held.get(source)
                    if message is not None:
                        self._dead_letter(message, RejectedInstance(exc.reason, exc.detail))
                self._release(self._queue.pop(0))
                continue
            self._unflushed = True
            for sink in self.sinks:
                sink.add(result)
            published.append((self._queue.pop(0), result))
            self.published += 1
            if self._done():
                break
        if published:
            self._flush()
            for study, result in published:
                self.ahead.published(study.assembly_key, study.sources)
                self._release(study)
                record_published(result)
            log.info("published %d studies (%d in total)", len(published), self.published)
            self._commit(force=True)

    def _arrival(self, study) -> datetime:
        """When the study's first instance reached Kafka: the same on every replay, unlike wall time."""
        stamps = [self._held[s].timestamp_ms for s in study.sources if s in self._held and self._held[s].timestamp_ms]
        if not stamps:
            return study.arrived_at
        return datetime.fromtimestamp(min(stamps) / 1000, tz=timezone.utc)

    def _release(self, study) -> None:
        for source in study.sources:
            self._held.pop(source, None)

    def _flush(self, timeout_s: float = 60.0) -> None:
        for sink in self.sinks:
            sink.flush(timeout_s)
        self.dlq.flush(timeout_s)
        self._unflushed = False

    def _held_offsets(self) -> dict[TopicPartitionKey, int]:
        """Lowest offset per partition of any study not yet published (assembling or queued)."""
        return merge_lowest(self.assembler.pending_offsets(),
                            lowest_offsets(s for study in self._queue for s in study.sources))

    def _commit(self, force: bool = False, timeout_s: float = 60.0) -> None:
        if not force and time.monotonic() - self._last_commit < _COMMIT_INTERVAL_S:
            return
        offsets = self.watermark.to_commit(self._held_offsets(), refresh=self.ahead.changed)
        self._last_commit = time.monotonic()
        if not offsets:
            return
        self._flush(timeout_s)  # a dead-lettered instance counts as done only once the DLQ acknowledged it
        try:
            self.source.commit(offsets, self._commit_metadata(offsets), timeout_s=min(timeout_s, 30.0))
        except Exception as exc:  # noqa: BLE001 - an uncommitted offset means a replay, never a loss
            log.warning("commit failed, retrying with the next commit: %s: %s", type(exc).__name__, exc)
            return
        self.watermark.committed(offsets)
        self.ahead.committed(offsets)
        # messages below a committed offset belong to no unpublished study (ignored views, localizers)
        self._held = {k: v for k, v in self._held.items() if k[2] >= offsets.get((k[0], k[1]), -1)}
        log.debug("committed %s", offsets)

    def _commit_metadata(self, offsets: dict[TopicPartitionKey, int]) -> dict[TopicPartitionKey, str]:
        return {partition: self.ahead.metadata(partition, offset) for partition, offset in offsets.items()}

    def _apply_backpressure(self) -> None:
        """Bound in-flight studies by pausing partitions instead of buffering.

        At the bound, only partitions that hold an unfinished study keep flowing: pausing those too would
        starve the very studies whose completion frees capacity (a study lives on one partition).
        """
        in_flight = len(self.assembler) + len(self._queue)
        if in_flight >= self.settings.max_in_flight_studies:
            busy = set(self._held_offsets())
            idle = self.source.assignment() - busy
            if idle - self.source.paused:
                log.info("%d studies in flight: pausing %d partitions", in_flight, len(idle))
            self.source.pause_only(idle)
        elif self.source.paused:
            log.info("%d studies in flight: resuming consumption", in_flight)
            self.source.resume()

    def _wait(self, seconds: float) -> None:
        """Back off without leaving the group: poll paused partitions (heartbeats continue)."""
        self.source.pause()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stopping:
            self.source.poll(timeout_s=min(0.5, max(deadline - time.monotonic(), 0.0)))
        self.source.resume()

    def _shutdown(self) -> None:
        """Commit what was published; abandon (do not commit) anything still assembling or queued."""
        try:
            if self._queue or len(self.assembler):
                log.info("stopping with %d studies unfinished; they will be replayed",
                         len(self._queue) + len(self.assembler))
            # bounded, so that SIGTERM ends the process within an orchestrator's grace period
            self._commit(force=True, timeout_s=_SHUTDOWN_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - nothing committed means a replay, never a loss
            log.exception("final commit failed; uncommitted studies will be replayed")
        finally:
            self.source.close()
            for sink in self.sinks[1:]:
                sink.close()
            self._producer.close(timeout=_SHUTDOWN_TIMEOUT_S)

    def stop(self, *_args) -> None:
        self.stopping = True


def main_worker(args) -> int:
    """`oncostream worker --bootstrap HOST:PORT [--topic T] [--triton HOST:PORT] [--max-studies N] [--out DIR]`."""
    from oncostream import metrics
    from oncostream.pipeline import Pipeline, delivery_sinks, make_backend

    _quiet_kafka_client_logs()
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
    sinks.extend(delivery_sinks(settings))  # PACS by C-STORE / STOW-RS when the settings name one
    backend = make_backend(settings)
    worker = Worker(settings, args.bootstrap, args.topic or settings.topic_dicom, Pipeline(settings, backend),
                    sinks, max_studies=args.max_studies)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    try:
        worker.run()
    finally:
        backend.close()
    log.info("worker stopped after publishing %d studies", worker.published)
    return 0


# --------------------------------------------------------------------------------------------- contract

TRIAGE_SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "triage_event.schema.json"


def triage_event_schema_text() -> str:
    """JSON Schema (draft 2020-12) of the TriageEvent JSON on `oncostream.triage`, as committed in docs/."""
    import json

    from oncostream.contracts import SCHEMA_VERSION, TriageEvent

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$comment": f"oncostream TriageEvent schema_version {SCHEMA_VERSION}; generated by "
                          "`python -m oncostream.streaming schema`, do not edit by hand",
              **TriageEvent.model_json_schema(mode="serialization")}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["schema"]:
        raise SystemExit("usage: python -m oncostream.streaming schema > docs/triage_event.schema.json")
    sys.stdout.write(triage_event_schema_text())
