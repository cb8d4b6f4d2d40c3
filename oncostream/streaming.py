"""`oncostream produce`, and the worker's commit bookkeeping: DICOM through a real Kafka, at least once.

Producer: one record per instance, key = StudyInstanceUID (so a study stays on one partition, in
order), headers content-type / program / trace-id; inline up to `settings.inline_limit_bytes`, a claim
check above it.

Worker (oncostream.app.worker): a consumer-group member that parses, assembles per study, runs the study
lifecycle, and only then commits. The commit rule lives in one place, `Watermark`: a partition's committed
offset is min(lowest offset held by a study not yet published, highest consumed + 1). A crash replays
unfinished studies; output UIDs are deterministic, so replays republish identical results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from oncostream.contracts import CONTENT_TYPE_CLAIM_CHECK, CONTENT_TYPE_DICOM, ClaimCheck
from oncostream.errors import OncostreamError
from oncostream.settings import TRIAGE_EVENT_SCHEMA, Settings

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]
# a message may be above the inline limit only as a claim check; this caps a single request
_MAX_REQUEST_BYTES = 64 * 1024 * 1024


def compression_type() -> str:
    """lz4 when its Python package is installed (fast), otherwise gzip (always available)."""
    from kafka.codec import has_lz4

    return "lz4" if has_lz4() else "gzip"


def make_producer(bootstrap: str, client_id: str, settings: Settings | None = None, **overrides):
    """A KafkaProducer that waits for all in-sync replicas and never reorders or duplicates on retry.

    Transport security (TLS, client certificate, SASL) comes from ``settings`` through
    ``oncostream.transport_security.kafka_client``, like every other Kafka client oncostream builds;
    without ``settings`` the connection is PLAINTEXT (tools and tests on a loopback broker).
    KafkaUnreachable says why when no broker can be reached."""
    from kafka import KafkaProducer

    from oncostream.transport_security import kafka_client

    config = dict(client_id=client_id, acks="all", enable_idempotence=True,
                  compression_type=compression_type(), linger_ms=20, batch_size=1024 * 1024,
                  max_request_size=_MAX_REQUEST_BYTES, request_timeout_ms=60_000, max_block_ms=120_000)
    config.update(overrides)
    return kafka_client(KafkaProducer, bootstrap, settings, **config)


def quiet_kafka_client_logs() -> None:
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
    0700 directory (oncostream.claim_store.DirectoryClaimStore)."""
    from oncostream.claim_store import DirectoryClaimStore

    return DirectoryClaimStore(claim_dir).write(data)


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
    producer = producer or make_producer(bootstrap, client_id="oncostream-producer", settings=settings)
    claims = None  # the claim store, built when the first instance needs it
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
                    if claims is None:
                        from oncostream.claim_store import claim_store_from_settings

                        claims = claim_store_from_settings(settings)
                    value = claims.write(data).model_dump_json().encode()
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

    quiet_kafka_client_logs()
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


# --------------------------------------------------------------------------------------------- contract

TRIAGE_SCHEMA_PATH = TRIAGE_EVENT_SCHEMA  # docs/ in a checkout, oncostream/_data/docs/ in a wheel


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
