"""Kafka source: DICOM instances from `oncostream.dicom` in a consumer group, plus the dead-letter topic.

A record's value is DICOM Part 10 bytes (`content-type: application/dicom`) or a claim check
(`application/vnd.oncostream.ref+json`, oncostream.contracts.ClaimCheck) for objects above the inline
limit. Offsets are never committed automatically: the worker commits watermarks after its sinks flushed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

from pydantic import ValidationError

from ingest.base import Source, SourceMessage
from oncostream.claim_store import ClaimStore
from oncostream.contracts import CONTENT_TYPE_CLAIM_CHECK, CONTENT_TYPE_DICOM, ClaimCheck
from oncostream.errors import ClaimStoreUnavailable, DeadLetterUnavailable, RejectedInstance
from oncostream.settings import Settings

log = logging.getLogger(__name__)

# the largest record the topics take (max.message.bytes, 64 MiB) and a response carrying one
_MAX_RESPONSE_BYTES = 72 * 1024 * 1024
# what the consumer fetches ahead per partition and per request: small, since it is read-ahead held in
# memory (parked whole while a partition is paused); the broker still returns a single larger record
# batch whole when it comes first (KIP-74), so a 64 MiB instance is read as before
_FETCH_PARTITION_BYTES = 4 * 1024 * 1024
_FETCH_REQUEST_BYTES = 16 * 1024 * 1024

TopicPartitionKey = tuple[str, int]


class DeadLetterError(DeadLetterUnavailable):
    """The dead-letter topic did not acknowledge a record; offsets must not move past it."""


@dataclass
class KafkaMessage(SourceMessage):
    """A SourceMessage that also keeps the record key and its timestamp (ms since the epoch)."""

    key: bytes | None = None
    timestamp_ms: int = 0


def decode_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (headers or [])}


def encode_headers(headers: dict[str, str]) -> list[tuple[str, bytes]]:
    return [(k, v.encode("utf-8")) for k, v in headers.items()]


class ClaimCheckResolver:
    """Fetches the object a claim check points at and verifies its size and SHA-256.

    URIs of the claim store's scheme are read only from the claim store (oncostream.claim_store:
    regular files directly in the configured directory, or keys directly under the configured S3
    bucket and prefix; size checked before reading, SHA-256 after); the claim check comes in an
    untrusted record, so ``file:///etc/passwd``, ``/dev/zero``, a FIFO or another bucket are refused
    without being read. Other schemes are registered with a function ``uri -> bytes`` (a WADO-RS
    resolver registers ``http``/``https``) and nothing else changes.

    Objects of studies that were committed are deleted through ``committed``; objects of dead-
    lettered instances stay until the store collects them by age, so that the dead-letter record's
    claim check can still be followed.
    """

    _COLLECT_INTERVAL_S = 3600.0

    def __init__(self, max_bytes: int, store: ClaimStore):
        if not isinstance(store, ClaimStore):
            raise TypeError(f"store must be a ClaimStore, got {type(store).__name__}")
        self.max_bytes = max_bytes
        self.store = store
        self._fetchers: dict[str, Callable[[str], bytes]] = {}
        self._resolved: dict[tuple, ClaimCheck] = {}  # source (topic, partition, offset) -> its claim
        self._last_collect = float("-inf")

    def register(self, scheme: str, fetch: Callable[[str], bytes]) -> None:
        if scheme in ("file", "s3", self.store.scheme):
            raise ValueError(f"scheme: {scheme} URIs are read only from the configured claim store")
        self._fetchers[scheme] = fetch

    def resolve(self, claim: ClaimCheck, source: tuple | None = None) -> bytes:
        """The object's bytes; ``source`` (topic, partition, offset) lets ``committed`` delete it later."""
        if claim.size > self.max_bytes:
            raise RejectedInstance("oversize", f"claim check refers to {claim.size} bytes, above the limit of "
                                               f"{self.max_bytes} bytes")
        scheme = urlparse(claim.uri).scheme
        if scheme == self.store.scheme:
            data = self.store.read(claim)
        else:
            data = self._fetch_registered(scheme, claim)
        if source is not None and None not in source:
            self._resolved[source] = claim
        return data

    def _fetch_registered(self, scheme: str, claim: ClaimCheck) -> bytes:
        fetch = self._fetchers.get(scheme)
        if fetch is None:
            raise RejectedInstance("claim_check_unresolvable", f"no resolver for URI scheme {scheme!r}")
        try:
            data = fetch(claim.uri)
        except OSError as exc:
            raise RejectedInstance("claim_check_unresolvable", f"cannot fetch claim-checked object: "
                                                               f"{type(exc).__name__}") from exc
        if len(data) != claim.size or hashlib.sha256(data).hexdigest() != claim.sha256:
            raise RejectedInstance("claim_check_mismatch", "claim-checked object differs in size or SHA-256 "
                                                           "from its claim check")
        return data

    def track(self, source: tuple, claim: ClaimCheck) -> None:
        """An object written to the claim store for ``source`` (a held message spilled there): deleted by
        ``committed`` like a claim check that arrived with the record."""
        self._resolved[source] = claim

    def committed(self, offsets: dict[TopicPartitionKey, int], published: Iterable[tuple] = ()) -> int:
        """Offsets were committed (the next offset to read, per partition): delete the claim-checked
        objects of ``published`` sources below them, forget every other claim below them, and collect
        old objects once an hour. Returns how many objects were deleted. Never raises: a file left
        behind is collected by age."""
        published = set(published)
        deleted = 0
        for source in [s for s in self._resolved if s[2] < offsets.get((s[0], s[1]), -1)]:
            claim = self._resolved.pop(source)
            if source in published and self.store.owns(claim.uri):
                try:
                    deleted += self.store.delete(claim)
                except (OSError, ClaimStoreUnavailable):
                    log.warning("cannot delete a committed claim-checked object; age collection will", exc_info=True)
        now = time.monotonic()
        if now - self._last_collect >= self._COLLECT_INTERVAL_S:
            self._last_collect = now
            try:
                self.store.collect()
            except (OSError, ClaimStoreUnavailable):
                log.warning("claim store collection failed", exc_info=True)
        return deleted


def instance_bytes(message: SourceMessage, resolver: ClaimCheckResolver) -> bytes:
    """The DICOM Part 10 bytes of a message: its value, or what its claim check points at."""
    content_type = message.headers.get("content-type", CONTENT_TYPE_DICOM)
    if content_type == CONTENT_TYPE_CLAIM_CHECK:
        try:
            claim = ClaimCheck.model_validate_json(message.data)
        except ValidationError as exc:
            raise RejectedInstance("claim_check_invalid", f"value is not a valid claim check: "
                                                          f"{exc.error_count()} validation errors") from exc
        return resolver.resolve(claim, source=(message.topic, message.partition, message.offset))
    if content_type != CONTENT_TYPE_DICOM:
        raise RejectedInstance("unsupported_content_type", f"content-type {content_type!r} is neither "
                                                           f"{CONTENT_TYPE_DICOM} nor {CONTENT_TYPE_CLAIM_CHECK}")
    return message.data


def _release_parked_fetches(consumer) -> None:
    """Work around a kafka-python 3.0.x fetcher stall (docs/pitfalls.md): records fetched for a partition
    that was paused meanwhile are parked and handed back after it resumes, but only while the fetcher's
    in-line slot (``_next_partition_records``) is None, and a fully drained record set stays in that slot
    (it is falsy, not None). The parked partitions are then neither returned nor fetched again: a worker
    pausing and resuming partitions (backpressure, backoff) stopped receiving records for good. A drained
    set holds nothing, so emptying the slot changes nothing else. No-op where the attribute is absent."""
    fetcher = getattr(consumer, "_fetcher", None)
    current = getattr(fetcher, "_next_partition_records", None)
    if current is not None and not current:
        fetcher._next_partition_records = None


class KafkaSource(Source):
    """A consumer-group member on the DICOM topic, with manual commits, pause/resume and rebalance hooks.

    ``on_revoked`` / ``on_assigned`` receive sets of (topic, partition); they run on kafka-python's I/O
    thread while ``poll`` rebalances, so they must not block on the consumer (no synchronous commit):
    the worker drops revoked assemblies there and sends at most an asynchronous commit.
    """

    def __init__(self, bootstrap: str, topic: str, group_id: str, *, settings: Settings | None = None,
                 on_revoked: Callable[[set[TopicPartitionKey]], None] | None = None,
                 on_assigned: Callable[[set[TopicPartitionKey]], None] | None = None,
                 max_poll_records: int = 64, client_id: str = "oncostream-worker"):
        """``settings`` gives the transport security (oncostream.transport_security.kafka_client); without
        it the connection is PLAINTEXT."""
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        from oncostream.transport_security import kafka_client

        self.topic = topic
        self._consumer = kafka_client(
            KafkaConsumer, bootstrap, settings, group_id=group_id, client_id=client_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=max_poll_records,
            max_partition_fetch_bytes=_FETCH_PARTITION_BYTES, fetch_max_bytes=_FETCH_REQUEST_BYTES,
            receive_message_max_bytes=_MAX_RESPONSE_BYTES + 1024 * 1024,
            # a study's inference can take a while on 2 cores; the heartbeat thread keeps membership
            max_poll_interval_ms=600_000, session_timeout_ms=10_000, heartbeat_interval_ms=3_000,
        )
        source = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                parts = {(tp.topic, tp.partition) for tp in revoked}
                if parts:
                    log.info("partitions revoked: %s", sorted(parts))
                    if on_revoked is not None:
                        on_revoked(parts)

            def on_partitions_assigned(self, assigned):
                parts = {(tp.topic, tp.partition) for tp in assigned}
                log.info("partitions assigned: %s", sorted(parts))
                # a new assignment starts unpaused. kafka-python 3.x keeps the paused flag of a partition
                # assigned again (2.x did not): resumed here, or a partition paused before the rebalance
                # stays paused while this source thinks otherwise, and is never read again (docs/pitfalls.md)
                if assigned:
                    source._consumer.resume(*assigned)
                source._paused = set()
                if on_assigned is not None:
                    on_assigned(parts)

        self._paused: set[TopicPartitionKey] = set()
        self.pause_count = 0  # times backpressure paused anything (observability and tests)
        self._closed = False
        self._consumer.subscribe([topic], listener=_Listener())

    @property
    def paused(self) -> set[TopicPartitionKey]:
        return set(self._paused)

    def poll(self, timeout_s: float = 0.5) -> list[KafkaMessage]:
        _release_parked_fetches(self._consumer)
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        messages: list[KafkaMessage] = []
        for records in batches.values():
            for r in records:
                messages.append(KafkaMessage(
                    data=r.value or b"", origin=f"{r.topic}/{r.partition}/{r.offset}",
                    headers=decode_headers(r.headers), topic=r.topic, partition=r.partition, offset=r.offset,
                    key=r.key, timestamp_ms=int(r.timestamp or 0)))
        return messages

    def __iter__(self) -> Iterator[SourceMessage]:
        while not self._closed:
            yield from self.poll()

    def assignment(self) -> set[TopicPartitionKey]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause_only(self, partitions: set[TopicPartitionKey]) -> None:
        """Fetch only from assigned partitions not in `partitions` (backpressure); membership stays alive."""
        from kafka.structs import TopicPartition

        partitions = partitions & self.assignment()
        if partitions == self._paused:
            return
        if partitions - self._paused:
            self.pause_count += 1
        resume, pause = self._paused - partitions, partitions - self._paused
        if resume:
            self._consumer.resume(*[TopicPartition(t, p) for t, p in resume])
        if pause:
            self._consumer.pause(*[TopicPartition(t, p) for t, p in pause])
        self._paused = set(partitions)

    def pause(self) -> None:
        self.pause_only(self.assignment())

    def resume(self) -> None:
        self.pause_only(set())

    def commit(self, offsets: dict[TopicPartitionKey, int], metadata: dict[TopicPartitionKey, str] | None = None,
               timeout_s: float = 30.0) -> None:
        """Synchronously commit `offsets` (the next offset to read, per partition) with optional per-partition
        metadata (see oncostream.streaming.PublishedAhead); raises on failure."""
        if not offsets:
            return
        from kafka.structs import OffsetAndMetadata, TopicPartition

        metadata = metadata or {}
        self._consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, metadata.get((t, p), ""), -1)
                               for (t, p), o in offsets.items()}, timeout_ms=int(timeout_s * 1000))

    def commit_async(self, offsets: dict[TopicPartitionKey, int],
                     metadata: dict[TopicPartitionKey, str] | None = None) -> None:
        """Send a commit without waiting: the only kind allowed inside a rebalance callback, which runs on
        kafka-python's I/O thread. Best effort: if it is lost, the partitions' next owner replays a little."""
        if not offsets:
            return
        from kafka.structs import OffsetAndMetadata, TopicPartition

        metadata = metadata or {}
        self._consumer.commit_async({TopicPartition(t, p): OffsetAndMetadata(o, metadata.get((t, p), ""), -1)
                                     for (t, p), o in offsets.items()})

    def seek(self, partition: TopicPartitionKey, offset: int | None) -> None:
        """Read ``partition`` again from ``offset`` (None: from its committed offset, or from the beginning
        when nothing was committed, as a new owner would)."""
        from kafka.structs import TopicPartition

        if offset is None:
            offset = self.committed(partition)
        if offset is None:
            self._consumer.seek_to_beginning(TopicPartition(*partition))
        else:
            self._consumer.seek(TopicPartition(*partition), offset)

    def committed(self, partition: TopicPartitionKey) -> int | None:
        from kafka.structs import TopicPartition

        return self._consumer.committed(TopicPartition(*partition))

    def committed_metadata(self, partition: TopicPartitionKey) -> str | None:
        """The metadata stored with the partition's committed offset (None before the first commit)."""
        from kafka.structs import TopicPartition

        committed = self._consumer.committed(TopicPartition(*partition), metadata=True)
        return committed.metadata if committed is not None else None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close(autocommit=False, timeout_ms=10_000)


class KafkaDeadLetter:
    """Publishes rejected instances to the DLQ topic with the original bytes and why they were rejected.

    Headers: `reason`, `detail`, `source-topic`, `source-partition`, `source-offset`, plus the record's
    own headers (content-type, program, trace-id). Like a sink: add() then flush() before committing.
    A record is forgotten only once the broker acknowledged it: a refused one stays pending (its offset
    held, see ``pending_offsets``) and is sent again by the next flush, which raises until it succeeds.
    """

    name = "dlq"

    def __init__(self, producer, topic: str):
        self._producer = producer
        self.topic = topic
        # source (topic, partition, offset) -> (message, error, future or None when it must be sent again)
        self._pending: dict[tuple, tuple[SourceMessage, RejectedInstance, object]] = {}
        self.failing = False  # the last flush raised: the worker pauses consumption until one succeeds

    def add(self, message: SourceMessage, error: RejectedInstance) -> None:
        source = (message.topic, message.partition, message.offset)
        self._pending[source] = (message, error, self._send(message, error))

    def _send(self, message: SourceMessage, error: RejectedInstance):
        headers = {k: v for k, v in message.headers.items()
                   if k not in ("reason", "detail", "source-topic", "source-partition", "source-offset")}
        headers.update({"reason": error.reason, "detail": error.detail, "source-topic": str(message.topic),
                        "source-partition": str(message.partition), "source-offset": str(message.offset)})
        key = message.key if isinstance(message, KafkaMessage) else None
        try:
            return self._producer.send(self.topic, key=key, value=message.data, headers=encode_headers(headers))
        except Exception:  # noqa: BLE001 - the producer may refuse at once (buffer full); flush sends again
            log.warning("dead-letter record not queued; it will be sent again at the next flush", exc_info=True)
            return None

    def pending_offsets(self) -> dict[TopicPartitionKey, int]:
        """Lowest offset per partition whose dead-letter record is not acknowledged yet (the watermark)."""
        low: dict[TopicPartitionKey, int] = {}
        for topic, partition, offset in self._pending:
            if topic is not None and partition is not None and offset is not None:
                low[(topic, partition)] = min(offset, low.get((topic, partition), offset))
        return low

    def flush(self, timeout_s: float = 60.0) -> None:
        for source, (message, error, future) in list(self._pending.items()):
            if future is None or (future.is_done and future.failed()):
                self._pending[source] = (message, error, self._send(message, error))
        self.failing = True
        try:
            self._producer.flush(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - kafka-python raises KafkaTimeoutError among others
            raise DeadLetterError(f"dead-letter flush failed: {type(exc).__name__}: {exc}") from exc
        problem = None
        for source, (message, error, future) in list(self._pending.items()):
            if future is not None and future.is_done and not future.failed():
                del self._pending[source]
            elif problem is None:
                problem = ("not acknowledged" if future is None or not future.is_done
                           else f"refused: {future.exception}")
        if problem is not None:
            raise DeadLetterError(f"{len(self._pending)} dead-letter record(s) {problem}")
        self.failing = False
