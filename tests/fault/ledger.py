"""The fault suite's bookkeeping: which studies went in, which came out triaged or dead-lettered, and the
acceptance invariant of every fault test (docs/RELIABILITY.md):

    studies in = studies triaged + studies dead-lettered with a reason (no study both, none lost);
    a study triaged more than once only with identical UIDs and content.

Also the worker subprocess the fault tests stop, kill and restart, and bounded polling.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom

from oncostream.settings import REPO_ROOT
from tests.fixtures.kafka import KafkaTopics

# fields that record when a result was made, not what it says: a replay may differ only there
TIMING_FIELDS = ("triaged_at",)


@dataclass(frozen=True)
class Studies:
    """Synthetic studies on disk: StudyInstanceUID -> instance files (production order) and modality."""

    files_of: dict[str, list[Path]]
    modality: dict[str, str]

    def files(self, uids) -> list[Path]:
        return [path for uid in uids for path in self.files_of[uid]]

    def of(self, modality: str) -> list[str]:
        return [uid for uid in self.files_of if self.modality[uid] == modality]


def load_studies(folders: list[Path]) -> Studies:
    files_of: dict[str, list[Path]] = {}
    modality: dict[str, str] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            files_of.setdefault(str(ds.StudyInstanceUID), []).append(path)
            modality[str(ds.StudyInstanceUID)] = str(ds.Modality)
    return Studies(files_of, modality)


@dataclass
class Ledger:
    """What the output topics hold, per StudyInstanceUID."""

    events: dict[str, list[dict]] = field(default_factory=dict)  # triage events, in topic order
    srs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # (SR SOPInstanceUID, SHA-256 of its bytes)
    dead: dict[str, list[str]] = field(default_factory=dict)  # the reason of each dead-letter record

    @classmethod
    def read(cls, topics) -> Ledger:
        ledger = cls()
        for record in topics.read(topics.triage):
            event = json.loads(record.value)
            ledger.events.setdefault(event["study_instance_uid"], []).append(event)
        for record in topics.read(topics.results):
            headers = {k: v.decode() for k, v in record.headers}
            if headers.get("kind") == "sr":
                sr = pydicom.dcmread(BytesIO(record.value), stop_before_pixels=True)
                ledger.srs.setdefault(str(sr.StudyInstanceUID), []).append(
                    (str(sr.SOPInstanceUID), hashlib.sha256(record.value).hexdigest()))
        for record in topics.read(topics.dlq):
            headers = {k: v.decode() for k, v in record.headers}
            ledger.dead.setdefault(record.key.decode() if record.key else "", []).append(headers.get("reason", ""))
        return ledger

    @property
    def triaged(self) -> set[str]:
        return set(self.events)

    def replays(self) -> dict[str, int]:
        """Studies triaged more than once -> how many times."""
        return {uid: len(events) for uid, events in self.events.items() if len(events) > 1}

    def counts(self, studies_in: set[str]) -> str:
        """The figures docs/RELIABILITY.md reports per fault (printed by each test; `pytest -s` shows them)."""
        replayed = sum(n - 1 for n in self.replays().values())
        return (f"studies in {len(studies_in)}, triaged {len(self.triaged)}, dead-lettered {len(self.dead)}, "
                f"replayed triage events {replayed}")

    def assert_balanced(self, studies_in: set[str]) -> None:
        """The acceptance invariant (module docstring)."""
        print(self.counts(studies_in))
        dead = set(self.dead)
        assert not self.triaged & dead, f"{len(self.triaged & dead)} studies both triaged and dead-lettered"
        assert self.triaged | dead == studies_in, (
            f"in {len(studies_in)}, triaged {len(self.triaged)}, dead-lettered {len(dead)}: "
            f"{len(studies_in - self.triaged - dead)} lost, {len((self.triaged | dead) - studies_in)} unexpected")
        for uid, reasons in self.dead.items():
            assert all(reasons), f"a dead-letter record of {uid} has no reason"
        for uid, events in self.events.items():
            first = _without_timing(events[0])
            assert all(_without_timing(e) == first for e in events), f"a replay of {uid} changed its triage event"
            copies = self.srs.get(uid, [])
            assert {sr_uid for sr_uid, _ in copies} == {first["sr_sop_instance_uid"]}, f"SR UIDs of {uid}"
            assert len({digest for _, digest in copies}) == 1, f"a replayed SR of {uid} is not byte-identical"


def _without_timing(event: dict) -> dict:
    return {k: v for k, v in event.items() if k not in TIMING_FIELDS}


class WorkerProcess:
    """`oncostream worker` as a subprocess logging to a file; with ``stage``, the staged worker
    (tests/fault/staged_worker.py) that halts there once and writes ``halt_dir/STAGE``."""

    def __init__(self, topics, log_path: Path, *extra: str, stage: str | None = None, halt_dir: Path | None = None,
                 **env: str):
        self.log_path = log_path
        self.halt_dir = halt_dir
        self.stage = stage
        self._log = log_path.open("wb")
        worker = ["worker", "--bootstrap", topics.bootstrap, "--topic", topics.dicom, *extra]
        if stage is None:
            command = [str(Path(sys.executable).with_name("oncostream")), *worker]
        else:
            halt_dir.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "tests.fault.staged_worker", stage, str(halt_dir), *worker]
        self.proc = subprocess.Popen(command, env=topics.env(**env), cwd=REPO_ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return f"--- {self.log_path.name} ---\n" + "\n".join(self.log_text().splitlines()[-lines:])

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"worker exited with {self.proc.returncode}:\n{self.log_tail()}"

    def halted_on(self) -> str | None:
        """The StudyInstanceUID the staged worker halted on, None before it got there."""
        marker = self.halt_dir / self.stage
        return marker.read_text() if marker.exists() else None

    def go(self) -> None:
        (self.halt_dir / "go").touch()

    def signal(self, sig: int, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._log.close()


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, workers=(), interval_s: float = 0.5):
    """Poll ``condition`` until it returns something truthy (returned); fail after ``timeout_s`` or as soon
    as a worker has exited, with the workers' log tails."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        for worker in workers:
            worker.assert_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s\n" + "\n".join(w.log_tail() for w in workers))
        time.sleep(interval_s)


def stop_all(workers) -> None:
    for worker in workers:
        if worker.proc.poll() is None:
            worker.signal(signal.SIGKILL)


def topics_on(bootstrap: str, partitions: int = 3) -> KafkaTopics:
    """Fresh oncostream topics and a consumer group on the broker at ``bootstrap``."""
    from oncostream.services.kafka import create_topics

    stem = f"fault-{uuid.uuid4().hex[:8]}"
    topics = KafkaTopics(bootstrap=bootstrap, dicom=f"{stem}.dicom", triage=f"{stem}.triage",
                         results=f"{stem}.results", dlq=f"{stem}.dlq", group=f"{stem}-workers", partitions=partitions)
    create_topics(bootstrap, {topics.dicom: partitions, topics.triage: 1, topics.results: 1, topics.dlq: 1})
    return topics


def committed_to_end(topics: KafkaTopics) -> bool:
    """Whether the group committed every input partition to its end (a partition never written counts as 0)."""
    return {p: offset or 0 for p, offset in topics.committed().items()} == topics.end_offsets()
