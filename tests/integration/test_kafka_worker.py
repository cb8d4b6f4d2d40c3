"""Workers against the real broker: exactly one result per study, crash replay, rebalance, DLQ, claim check.

Studies are small synthetic ones (`--size small`), mammography and LDCT interleaved. Workers whose
process must be killed run as real `oncostream worker` subprocesses; the others run in-process so the
models load once.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from oncostream.contracts import SCHEMA_VERSION
from oncostream.app.worker import Worker
from oncostream.streaming import produce_files
from tests.fixtures.kafka import run_until_published

pytestmark = pytest.mark.integration

ONCOSTREAM = str(Path(sys.executable).with_name("oncostream"))
N_MAMMO, N_LDCT, SEED = 16, 4, 40
WAIT_S = 240.0
# fields that record when something happened, not what was found: replays may differ only there
TIMING_FIELDS = ("triaged_at",)


@dataclass(frozen=True)
class Corpus:
    root: Path
    studies: dict[str, list[Path]]  # StudyInstanceUID -> instance files, in production order
    instances: dict[str, set[str]]  # StudyInstanceUID -> SOPInstanceUIDs
    modality: dict[str, str]

    def files(self, uids=None) -> list[Path]:
        return [p for uid in (uids or self.studies) for p in self.studies[uid]]

    def subset(self, mammo: int, ldct: int) -> list[str]:
        """The first `mammo` exams and `ldct` series, in production order (LDCT dominates run time)."""
        mg = [u for u in self.studies if self.modality[u] == "MG"][:mammo]
        ct = [u for u in self.studies if self.modality[u] == "CT"][:ldct]
        return [u for u in self.studies if u in mg or u in ct]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """20 studies; production order alternates mammography exams and LDCT series while both last."""
    from oncostream.synth.command import write_studies

    root = tmp_path_factory.mktemp("kafka-corpus")
    folders = write_studies(root, mammo=N_MAMMO, ldct=N_LDCT, seed=SEED, size="small")
    mg = [f for f in folders if f.name.startswith("mg-")]
    ct = [f for f in folders if f.name.startswith("ct-")]
    order = [f for pair in zip(mg, ct) for f in pair] + mg[len(ct):] + ct[len(mg):]
    studies: dict[str, list[Path]] = {}
    instances: dict[str, set[str]] = {}
    modality: dict[str, str] = {}
    for folder in order:
        for path in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uid = str(ds.StudyInstanceUID)
            studies.setdefault(uid, []).append(path)
            instances.setdefault(uid, set()).add(str(ds.SOPInstanceUID))
            modality[uid] = str(ds.Modality)
    assert len(studies) == N_MAMMO + N_LDCT
    return Corpus(root, studies, instances, modality)


@pytest.fixture(scope="module")
def pipeline():
    from oncostream.app.pipeline import Pipeline, make_backend
    from oncostream.settings import Settings

    settings = Settings()
    backend = make_backend(settings)
    yield Pipeline(settings, backend)
    backend.close()


def run_in_process(topics, pipeline, max_studies: int, wait_s: float = WAIT_S, **settings) -> Worker:
    """Run a worker in this process until it published `max_studies` (stopped after `wait_s` regardless)."""
    return run_until_published(Worker(topics.settings(**settings), topics.bootstrap, topics.dicom, pipeline, [],
                                      max_studies=max_studies), wait_s)


class WorkerProcess:
    """`oncostream worker` as a subprocess, logging to a file; use through the `spawn_worker` fixture."""

    def __init__(self, topics, log_path: Path, *extra: str, **env: str):
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen([ONCOSTREAM, "worker", "--bootstrap", topics.bootstrap, "--topic", topics.dicom,
                                      *extra], env=topics.env(**env), stdout=self._log, stderr=subprocess.STDOUT)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, sig: int, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"worker exited with {self.proc.returncode}:\n{self.log_tail()}"


@pytest.fixture
def spawn_worker():
    """Starts worker subprocesses; any still running when the test ends is killed."""
    started: list[WorkerProcess] = []

    def spawn(topics, log_path: Path, *extra: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess(topics, log_path, *extra, **env)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        if worker.proc.poll() is None:
            worker.signal(signal.SIGKILL)


def triage_events(topics) -> list[tuple[bytes, dict]]:
    return [(r.key, json.loads(r.value)) for r in topics.read(topics.triage)]


def wait_for_studies(topics, expected: set[str], workers: list[WorkerProcess], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = {event["study_instance_uid"] for _, event in triage_events(topics)}
        if expected <= seen:
            return
        for worker in workers:
            worker.assert_alive()
        time.sleep(1.0)
    pytest.fail(f"{len(expected - seen)} of {len(expected)} studies not triaged within {timeout_s:.0f} s:\n"
                + "\n".join(w.log_tail() for w in workers))


def assigned_partitions(worker: WorkerProcess) -> int:
    """How many partitions the worker's latest assignment holds (its log), 0 before the first."""
    lines = [line for line in worker.log_path.read_text(errors="replace").splitlines()
             if "partitions assigned:" in line]
    return lines[-1].count("(") if lines else 0


def wait_for_assignment(workers: list[WorkerProcess], partitions_each: int, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while [assigned_partitions(w) for w in workers] != [partitions_each] * len(workers):
        if time.monotonic() > deadline:
            pytest.fail("workers did not settle on their partitions:\n" + "\n".join(w.log_tail() for w in workers))
        for worker in workers:
            worker.assert_alive()
        time.sleep(0.5)


def fully_committed(topics) -> dict[int, int]:
    """Committed offset per input partition; a partition that never held a record counts as 0."""
    return {partition: offset or 0 for partition, offset in topics.committed().items()}


def wait_for_commits(topics, workers: list[WorkerProcess], timeout_s: float = 120.0) -> None:
    """Until the group committed every input partition to its end (replays of published studies finish too)."""
    deadline = time.monotonic() + timeout_s
    ends = topics.end_offsets()
    while (committed := fully_committed(topics)) != ends:
        if time.monotonic() > deadline:
            pytest.fail(f"committed {committed}, end offsets {ends}:\n" + "\n".join(w.log_tail() for w in workers))
        for worker in workers:
            worker.assert_alive()
        time.sleep(1.0)


def sr_references(topics) -> dict[str, list[tuple[str, set[str], str]]]:
    """StudyInstanceUID -> [(SR SOPInstanceUID, referenced SOPInstanceUIDs, SHA-256 of the SR bytes)]."""
    found: dict[str, list[tuple[str, set[str], str]]] = {}
    for record in topics.read(topics.results):
        headers = {k: v.decode() for k, v in record.headers}
        if headers["kind"] != "sr":
            continue
        sr = pydicom.dcmread(BytesIO(record.value))
        assert headers["sop-instance-uid"] == str(sr.SOPInstanceUID)
        assert record.key.decode() == str(sr.StudyInstanceUID)
        referenced = {str(item.ReferencedSOPInstanceUID)
                      for study in sr.CurrentRequestedProcedureEvidenceSequence
                      for series in study.ReferencedSeriesSequence
                      for item in series.ReferencedSOPSequence}
        digest = hashlib.sha256(record.value).hexdigest()
        found.setdefault(str(sr.StudyInstanceUID), []).append((str(sr.SOPInstanceUID), referenced, digest))
    return found


def without_timing(event: dict) -> dict:
    return {k: v for k, v in event.items() if k not in TIMING_FIELDS}


def test_twenty_studies_give_exactly_twenty_events_and_one_dead_letter(kafka_topics, corpus, pipeline,
                                                                       broken_instances, tmp_path):
    malformed = tmp_path / "malformed.dcm"
    malformed.write_bytes(broken_instances["truncated"].data)
    report = produce_files([malformed, *corpus.files()], kafka_topics.settings(), kafka_topics.bootstrap)
    assert report.instances == 1 + len(corpus.files())

    worker = run_in_process(kafka_topics, pipeline, max_studies=20)
    assert worker.published == 20

    events = triage_events(kafka_topics)
    assert len(events) == 20
    assert {key.decode() for key, _ in events} == set(corpus.studies)
    assert {e["study_instance_uid"] for _, e in events} == set(corpus.studies)
    assert {e["modality"] for _, e in events} == {"MG", "CT"}
    assert all(e["schema_version"] == SCHEMA_VERSION and not e["incomplete"] for _, e in events)

    srs = sr_references(kafka_topics)
    assert set(srs) == set(corpus.studies)
    for uid, copies in srs.items():
        assert len(copies) == 1, uid
        sr_uid, referenced, _ = copies[0]
        assert referenced == corpus.instances[uid], uid
        assert sr_uid == next(e["sr_sop_instance_uid"] for _, e in events if e["study_instance_uid"] == uid)

    [dead] = kafka_topics.read(kafka_topics.dlq)
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["reason"] == "truncated" and headers["detail"]
    assert headers["source-topic"] == kafka_topics.dicom
    assert dead.value == malformed.read_bytes()
    # everything was published, so every partition is committed to its end
    assert fully_committed(kafka_topics) == kafka_topics.end_offsets()


def test_a_study_that_fails_goes_to_the_dead_letter_topic_whole_and_the_others_still_publish(
        kafka_topics_factory, corpus, pipeline, tmp_path):
    # every slice of this LDCT series is a valid instance, but all share one position: the series has
    # no geometry, so the study fails at processing (after assembly), not at parsing
    broken_uid, good_ct = [u for u in corpus.studies if corpus.modality[u] == "CT"][:2]
    exam = next(u for u in corpus.studies if corpus.modality[u] == "MG")
    broken = []
    for path in corpus.studies[broken_uid]:
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, 0.0, -150.0]
        broken.append(tmp_path / path.name)
        ds.save_as(broken[-1])
    topics = kafka_topics_factory(1)  # one partition: the failing study completes first
    produce_files([*broken, *corpus.files([exam, good_ct])], topics.settings(), topics.bootstrap)
    worker = run_in_process(topics, pipeline, max_studies=2)
    assert worker.published == 2
    assert {e["study_instance_uid"] for _, e in triage_events(topics)} == {exam, good_ct}
    dead = topics.read(topics.dlq)
    assert sorted(r.value for r in dead) == sorted(p.read_bytes() for p in broken)
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["reason"] == "processing_failed"
        assert "share one position" in headers["detail"]
    # the failed study's instances are dead-lettered, so they count as done: committed to the end
    assert fully_committed(topics) == topics.end_offsets()


def test_claim_check_gives_the_same_result_as_inline(kafka_topics_factory, corpus, pipeline, tmp_path):
    uid = next(u for u in corpus.studies if corpus.modality[u] == "MG")
    outcomes = []
    for inline_limit in (1 << 30, 1024):  # everything inline; every instance by claim check
        topics = kafka_topics_factory(1)
        settings = topics.settings(inline_limit_bytes=inline_limit, claim_check_dir=tmp_path / "claims")
        report = produce_files(corpus.files([uid]), settings, topics.bootstrap)
        assert report.claim_checks == (len(corpus.studies[uid]) if inline_limit == 1024 else 0)
        # the worker reads claim checks only from its own claim store: the producer's
        run_in_process(topics, pipeline, max_studies=1, claim_check_dir=tmp_path / "claims")
        assert not list((tmp_path / "claims").glob("*.dcm")), "a committed study's claim-checked objects are deleted"
        [(_, event)] = triage_events(topics)
        srs = sr_references(topics)
        outcomes.append((without_timing({**event, "arrived_at": None}), srs))
    (inline_event, inline_srs), (claimed_event, claimed_srs) = outcomes
    assert claimed_event == inline_event
    assert claimed_srs == inline_srs, "the SR should be byte-identical whichever way the instances travelled"
    [(sr_uid, referenced, _)] = inline_srs[uid]
    assert (sr_uid, referenced) == (inline_event["sr_sop_instance_uid"], corpus.instances[uid])


def test_backpressure_pauses_other_partitions_while_the_bound_is_reached(kafka_topics, corpus, pipeline):
    # an exam missing one view stays open until its quiet timeout: with at most one study in flight the
    # worker must stop fetching new studies from the other partitions meanwhile, then carry on
    open_exam, *others = corpus.subset(mammo=5, ldct=1)
    sent = corpus.studies[open_exam][:-1]
    produce_files([*sent, *corpus.files(others)], kafka_topics.settings(), kafka_topics.bootstrap)
    worker = run_in_process(kafka_topics, pipeline, max_studies=1 + len(others), max_in_flight_studies=1,
                            assembly_timeout_s=3.0)
    assert worker.source.pause_count > 0, "the open exam reached the bound: other partitions should pause"
    events = {e["study_instance_uid"]: e for _, e in triage_events(kafka_topics)}
    assert set(events) == {open_exam, *others}
    assert [uid for uid, e in events.items() if e["incomplete"]] == [open_exam]


def test_a_backlog_on_one_partition_is_read_as_capacity_frees_not_all_at_once(kafka_topics_factory, corpus,
                                                                               pipeline):
    # a backlog always has an unfinished study on every partition: the bound must still hold (no more
    # than one poll's worth of studies past it), and a study left part-read on the paused partition must
    # not close incomplete for want of its unread instances
    topics = kafka_topics_factory(1)
    uids = corpus.subset(mammo=4, ldct=4)
    files = corpus.files(uids)
    produce_files(files, topics.settings(), topics.bootstrap)
    bound, per_poll = 1, 64  # ingest/kafka_source.py KafkaSource max_poll_records
    owners = [uid for uid in uids for _ in corpus.studies[uid]]
    one_poll = max(len(set(owners[k:k + per_poll])) for k in range(len(owners)))
    worker = Worker(topics.settings(max_in_flight_studies=bound, assembly_timeout_s=2.0), topics.bootstrap,
                    topics.dicom, pipeline, [], max_studies=len(uids))
    seen: list[int] = []
    apply_backpressure = worker._apply_backpressure

    def observed():
        seen.append(len(worker.assembler) + len(worker._queue))
        apply_backpressure()

    worker._apply_backpressure = observed
    run_until_published(worker, WAIT_S)
    events = {e["study_instance_uid"]: e for _, e in triage_events(topics)}
    assert set(events) == set(uids)
    assert not [uid for uid, e in events.items() if e["incomplete"]]
    assert worker.source.pause_count > 0
    assert max(seen) <= bound + one_poll < len(uids), (max(seen), bound, one_poll)


def test_quiet_timeout_publishes_an_incomplete_exam_saying_what_is_missing(kafka_topics, corpus, pipeline):
    uid = next(u for u in corpus.studies if corpus.modality[u] == "MG")
    *sent, dropped = corpus.studies[uid]
    produce_files(sent, kafka_topics.settings(), kafka_topics.bootstrap)
    run_in_process(kafka_topics, pipeline, max_studies=1, assembly_timeout_s=2.0)
    [(_, event)] = triage_events(kafka_topics)
    ds = pydicom.dcmread(dropped, stop_before_pixels=True)
    assert event["study_instance_uid"] == uid
    assert event["incomplete"] is True
    assert event["missing"] == [f"{ds.ImageLaterality}{ds.ViewPosition}"]


def test_sigkill_mid_study_then_restart_triages_every_study_once_in_content(kafka_topics, corpus, tmp_path,
                                                                           spawn_worker):
    # one LDCT series arrives in two halves; the worker is killed while it holds the first half
    held_back = next(u for u in corpus.studies if corpus.modality[u] == "CT")
    files = corpus.studies[held_back]
    first_half, second_half = files[: len(files) // 2], files[len(files) // 2:]
    others = [u for u in corpus.studies if u != held_back]
    settings = kafka_topics.settings()
    produce_files(first_half, settings, kafka_topics.bootstrap)
    produce_files(corpus.files(others), settings, kafka_topics.bootstrap)
    env = {"ONCOSTREAM_ASSEMBLY_TIMEOUT_S": "600"}  # the held study must stay open across the kill

    first = spawn_worker(kafka_topics, tmp_path / "worker-1.log", **env)
    wait_for_studies(kafka_topics, set(others), [first])
    first.signal(signal.SIGKILL)
    assert held_back not in {e["study_instance_uid"] for _, e in triage_events(kafka_topics)}
    # the watermark did not pass the held study's first instance
    held_records = [r for r in kafka_topics.read(kafka_topics.dicom) if r.key == held_back.encode()]
    [partition] = {r.partition for r in held_records}
    first_offset = min(r.offset for r in held_records)
    committed = kafka_topics.committed()[partition]
    assert committed is None or committed <= first_offset

    produce_files(second_half, settings, kafka_topics.bootstrap)
    second = spawn_worker(kafka_topics, tmp_path / "worker-2.log", **env)
    wait_for_studies(kafka_topics, set(corpus.studies), [second])
    wait_for_commits(kafka_topics, [second])
    assert second.signal(signal.SIGTERM) == 0, second.log_tail()

    by_study: dict[str, list[dict]] = {}
    for _, event in triage_events(kafka_topics):
        by_study.setdefault(event["study_instance_uid"], []).append(without_timing(event))
    assert set(by_study) == set(corpus.studies)
    # studies produced after the held one on its partition were published ahead of the commit: the commit's
    # metadata told the restarted worker to skip them (a kill between publish and commit may still duplicate)
    log = second.log_path.read_text(errors="replace")
    assert "its study was published before the last commit" in log, second.log_tail()
    for uid, copies in by_study.items():
        assert all(copy == copies[0] for copy in copies), f"replayed study {uid} changed its result"
        assert not copies[0]["incomplete"], uid
    srs = sr_references(kafka_topics)
    assert set(srs) == set(corpus.studies)
    for uid, copies in srs.items():
        assert {sr_uid for sr_uid, _, _ in copies} == {by_study[uid][0]["sr_sop_instance_uid"]}
        assert all(referenced == corpus.instances[uid] for _, referenced, _ in copies)
        assert len({digest for _, _, digest in copies}) == 1, f"replayed SR of {uid} is not byte-identical"


def test_two_workers_share_six_partitions_and_survive_one_stopping(kafka_topics_factory, corpus, tmp_path,
                                                                   spawn_worker):
    topics = kafka_topics_factory(6)
    uids = corpus.subset(mammo=8, ldct=2)
    outs = [tmp_path / "a", tmp_path / "b"]
    a = spawn_worker(topics, tmp_path / "worker-a.log", "--out", str(outs[0]))
    b = spawn_worker(topics, tmp_path / "worker-b.log", "--out", str(outs[1]))
    # produce only once both have joined the group with three partitions each: a worker that starts
    # slowly (a loaded machine) would otherwise find the first one done with every study
    wait_for_assignment([a, b], partitions_each=3)
    produce_files(corpus.files(uids), topics.settings(), topics.bootstrap)

    def published_by(out: Path) -> set[str]:
        path = out / "triage.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return {json.loads(line)["study_instance_uid"] for line in lines}

    deadline = time.monotonic() + WAIT_S
    while not (published_by(outs[0]) and published_by(outs[1])):
        assert time.monotonic() < deadline, "both workers should publish:\n" + a.log_tail() + "\n" + b.log_tail()
        a.assert_alive()
        b.assert_alive()
        time.sleep(0.5)
    assert b.signal(signal.SIGTERM) == 0, b.log_tail()
    wait_for_studies(topics, set(uids), [a])
    wait_for_commits(topics, [a])
    assert a.signal(signal.SIGTERM) == 0, a.log_tail()

    assert published_by(outs[0]) | published_by(outs[1]) == set(uids)
    assert "partitions revoked" in a.log_path.read_text(), "the survivor should have been rebalanced"


def test_replay_skips_the_tail_of_a_study_published_ahead_of_the_commit(kafka_topics_factory, corpus, pipeline):
    # one partition: a0, b0, a1..a3. Exam a completes and is published while b0 holds the commit at offset 1.
    # A replay from offset 1 must not re-assemble a1..a3 into a partial (different) second result for a.
    topics = kafka_topics_factory(1)
    a, b = corpus.subset(mammo=2, ldct=0)
    fa, fb = corpus.studies[a], corpus.studies[b]
    settings = topics.settings()
    for batch in ([fa[0]], [fb[0]], fa[1:]):
        produce_files(batch, settings, topics.bootstrap)
    first = run_in_process(topics, pipeline, max_studies=1)
    assert first.published == 1
    [partition] = topics.committed()
    assert topics.committed()[partition] == 1, "b0 holds the commit back"

    produce_files(fb[1:], settings, topics.bootstrap)
    # room for a second result: without the commit metadata, a1..a3 would close as an incomplete exam after
    # the 2 s quiet timeout and be published; with it, the worker publishes b only and is stopped at 20 s
    second = run_in_process(topics, pipeline, max_studies=2, wait_s=20.0, assembly_timeout_s=2.0)
    assert second.published == 1
    events = [e for _, e in triage_events(topics)]
    assert sorted(e["study_instance_uid"] for e in events) == sorted([a, b])
    assert not any(e["incomplete"] for e in events)


class HoldingPipeline:
    """The served pipeline, except that one study waits in processing until the test releases it."""

    def __init__(self, inner, held_uid: str):
        self.inner, self.held_uid = inner, held_uid
        self.release = threading.Event()

    def process(self, study):
        if study.study_instance_uid == self.held_uid and not self.release.wait(WAIT_S):
            raise AssertionError("the held study was never released")
        return self.inner.process(study)


def test_studies_published_out_of_order_never_move_the_commit_past_an_unfinished_one(kafka_topics_factory,
                                                                                       corpus, pipeline):
    # one partition: d, a, b, c. a is held in processing while d, b and c are published around it; the commit
    # reaches a's first offset and stays there until a itself is published
    topics = kafka_topics_factory(1)
    d, a, b, c = corpus.subset(mammo=4, ldct=0)
    produce_files(corpus.files([d, a, b, c]), topics.settings(), topics.bootstrap)
    first_of_a = min(r.offset for r in topics.read(topics.dicom) if r.key == a.encode())
    holding = HoldingPipeline(pipeline, held_uid=a)
    worker = Worker(topics.settings(max_studies_processing=2), topics.bootstrap, topics.dicom, holding, [],
                    max_studies=4)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not (worker.published == 3 and list(topics.committed().values()) == [first_of_a]):
            assert time.monotonic() < deadline, f"published {worker.published}, committed {topics.committed()}"
            assert thread.is_alive()
            time.sleep(0.2)
        published = [e["study_instance_uid"] for _, e in triage_events(topics)]
        assert sorted(published) == sorted([d, b, c]), "b and c finished while a was held"
        holding.release.set()
        thread.join(WAIT_S)
    finally:
        holding.release.set()
        worker.stop()
        thread.join(WAIT_S)
    assert worker.published == 4
    assert [e["study_instance_uid"] for _, e in triage_events(topics)][-1] == a
    assert list(topics.committed().values()) == list(topics.end_offsets().values())


# --- losses that the study lifecycle closes (docs/RELIABILITY.md) --------------------------------------------

def _refusing_topic(topics, which: str):
    """`topics` with its `which` topic (triage or dlq) replaced by one whose broker refuses every record
    (max.message.bytes below any record batch): a real refusal from the real broker."""
    from dataclasses import replace

    from oncostream.services.kafka import TOPIC_CONFIGS, create_topics

    name = f"{getattr(topics, which)}.refusing"
    create_topics(topics.bootstrap, {name: 1}, configs={**TOPIC_CONFIGS, "max.message.bytes": "16"})
    return replace(topics, **{which: name})


def test_a_triage_record_the_broker_refuses_is_dead_lettered_never_counted_published(kafka_topics_factory,
                                                                                  corpus, pipeline):
    topics = _refusing_topic(kafka_topics_factory(1), "triage")
    exam = corpus.subset(mammo=1, ldct=0)
    produce_files(corpus.files(exam), topics.settings(), topics.bootstrap)
    worker = Worker(topics.settings(), topics.bootstrap, topics.dicom, pipeline, [], max_studies=1)
    timer = threading.Timer(WAIT_S, worker.stop)
    timer.start()
    try:
        # the worker stops by itself once the study is finished either way: dead-lettered here
        worker._done = lambda: worker.published + worker.dead_lettered >= 1
        assert worker.run() == 0
    finally:
        timer.cancel()
    assert worker.published == 0 and worker.dead_lettered == 1
    dead = topics.read(topics.dlq)
    assert len(dead) == len(corpus.files(exam))
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["reason"] == "delivery_refused" and "MessageSizeTooLarge" in headers["detail"]
    assert fully_committed(topics) == topics.end_offsets(), "dead-lettered with a reason counts as done"


def test_a_refused_dead_letter_record_holds_the_commit_before_its_instance(kafka_topics_factory, corpus, pipeline,
                                                                         tmp_path):
    topics = _refusing_topic(kafka_topics_factory(1), "dlq")
    malformed = tmp_path / "truncated.dcm"
    malformed.write_bytes(corpus.files()[0].read_bytes()[:200])
    exam = corpus.subset(mammo=1, ldct=0)
    produce_files([malformed, *corpus.files(exam)], topics.settings(), topics.bootstrap)  # the bad one: offset 0
    worker = Worker(topics.settings(), topics.bootstrap, topics.dicom, pipeline, [])
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not (worker.dlq.failing and worker.published == 1):
            assert thread.is_alive() and time.monotonic() < deadline, "the worker should publish the exam"
            time.sleep(0.2)
    finally:
        worker.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert {e["study_instance_uid"] for _, e in triage_events(topics)} == set(exam)
    assert topics.read(topics.dlq) == []
    assert fully_committed(topics) == {0: 0}, "nothing may be committed past an instance nobody dead-lettered"


def test_every_slice_of_a_ct_series_without_geometry_is_dead_lettered(kafka_topics_factory, corpus, pipeline,
                                                                      tmp_path):
    ct = next(u for u in corpus.studies if corpus.modality[u] == "CT")
    exam = corpus.subset(mammo=1, ldct=0)
    broken = []
    for path in corpus.studies[ct][:2]:
        ds = pydicom.dcmread(path)
        del ds.ImageOrientationPatient
        broken.append(tmp_path / path.name)
        ds.save_as(broken[-1])
    topics = kafka_topics_factory(1)
    produce_files([*broken, *corpus.files(exam)], topics.settings(), topics.bootstrap)
    worker = run_in_process(topics, pipeline, max_studies=1)
    assert worker.published == 1
    dead = topics.read(topics.dlq)
    assert sorted(r.value for r in dead) == sorted(p.read_bytes() for p in broken)
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert "ImageOrientationPatient" in headers["detail"]
    assert fully_committed(topics) == topics.end_offsets()


class _DownSink:
    """A delivery sink (a PACS, say) that never comes back: every flush fails, not always as a SinkError."""

    name = "down"

    def __init__(self):
        self.flushes = 0

    def add(self, result):
        pass

    def flush(self, timeout_s: float = 60.0):
        from postprocess.errors import SinkError

        self.flushes += 1
        if self.flushes % 2:
            raise SinkError(self.name, "connection refused")
        raise ConnectionResetError("peer reset")  # what a sink's bug lets through

    def discard(self, uid):
        pass

    def close(self):
        pass


def test_a_sink_that_keeps_failing_dead_letters_its_study_and_never_escapes_the_worker(kafka_topics_factory,
                                                                                     corpus, pipeline):
    topics = kafka_topics_factory(1)
    exam = corpus.subset(mammo=1, ldct=0)
    produce_files(corpus.files(exam), topics.settings(), topics.bootstrap)
    settings = topics.settings(delivery_attempts=3, retry_initial_s=0.0)
    sink = _DownSink()
    worker = Worker(settings, topics.bootstrap, topics.dicom, pipeline, [sink])
    worker._done = lambda: worker.published + worker.dead_lettered >= 1
    timer = threading.Timer(WAIT_S, worker.stop)
    timer.start()
    try:
        assert worker.run() == 0
    finally:
        timer.cancel()
    assert (worker.published, worker.dead_lettered, sink.flushes) == (0, 1, 3)
    dead = topics.read(topics.dlq)
    assert len(dead) == len(corpus.files(exam))
    assert {dict((k, v.decode()) for k, v in r.headers)["reason"] for r in dead} == {"delivery_failed"}
    assert fully_committed(topics) == topics.end_offsets()
