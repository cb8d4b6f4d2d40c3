"""The results store on the real databases, SQLite (embedded) and PostgreSQL (started by the suite): the same
tests on both, since one schema serves both."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import delete, inspect

from oncostream.store import StoreError, open_store
from oncostream.store.migrate import current_revision, head_revision
from oncostream.store.schema import VERSION_TABLE, metadata, studies
from oncostream.store.sql import rows_of
from oncostream.study import LookbackCandidate
from postprocess.errors import SinkError
from postprocess.store_sink import StoreSink
from tests import store_cases as cases


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'results.db'}"
    return request.getfixturevalue("postgres_store_url")


@pytest.fixture
def store(store_url):
    opened = open_store(store_url)
    yield opened
    opened.close()


def test_migrations_from_empty_build_the_schema(store_url) -> None:
    store = open_store(store_url)  # an empty database (SQLite: not even its folder exists yet)
    try:
        assert current_revision(store.engine) == head_revision()
        with store.engine.connect() as conn:
            # the migrated database is exactly the schema the code reads and writes
            assert compare_metadata(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}),
                                    metadata) == []
            assert set(inspect(conn).get_table_names()) == set(metadata.tables) | {VERSION_TABLE}
    finally:
        store.close()
    again = open_store(store_url)  # opening a current database migrates nothing and keeps its rows
    try:
        assert current_revision(again.engine) == head_revision() and again.count() == 0
    finally:
        again.close()


def test_migrations_keep_rows_of_an_earlier_schema(store_url) -> None:
    from sqlalchemy import create_engine, text

    from oncostream.store.migrate import upgrade
    from oncostream.store.sql import normalise_url

    if store_url.startswith("sqlite"):
        Path(store_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engine = create_engine(normalise_url(store_url))
    upgrade(engine, "0001")  # a database a previous release created and filled
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO studies (study_instance_uid, patient_key, program, modality, priority, priority_rank, "
            "study_date, arrived_at, triaged_at, needs_human_review, incomplete, schema_version, event_json) "
            "VALUES ('1.2.826.0.0.1', 'pk-old', 'default', 'CT', 'LOW', 3, '2025-01-02', '2025-01-02 08:00:00', "
            "'2025-01-02 08:00:04', false, false, '1.1', '{}')"))
        conn.execute(text("INSERT INTO nodules VALUES ('1.2.826.0.0.1', 0, '2.25.1', 1, 2, 3, 5, 6, 65, 'solid', "
                          "0.1, '2', NULL, NULL, NULL)"))
    engine.dispose()
    store = open_store(store_url)
    try:
        assert current_revision(store.engine) == head_revision() != "0001"
        rows = rows_of(store)
        assert [r[0] for r in rows["studies"]] == ["1.2.826.0.0.1"] and len(rows["nodules"]) == 1
        store.record(cases.ct_result("1.2.826.0.0.2", prior="1.2.826.0.0.1"))  # the new columns take values
        grown = [r for r in rows_of(store)["nodules"] if r[0] == "1.2.826.0.0.2"][0]
        assert dict(zip([c.name for c in metadata.tables["nodules"].columns], grown))["growing"] is True
    finally:
        store.close()


def test_record_is_idempotent(store, store_url, tmp_path) -> None:
    ct, mg = cases.ct_result("1.2.826.0.1.1"), cases.mg_result("1.2.826.0.1.2")
    store.record(ct)
    store.record(mg)
    first = rows_of(store)
    assert store.count() == 2
    assert [len(first[t]) for t in ("studies", "nodules", "mammo_findings", "outputs")] == [2, 2, 2, 3]
    store.record(ct)  # at-least-once delivery: the same study again
    assert rows_of(store) == first
    # a replay by another process, through the sink, added twice before one flush
    other = open_store(store_url)
    sink = StoreSink(other)
    sink.add(mg)
    sink.add(mg)
    sink.flush()
    sink.close()
    assert rows_of(store) == first
    # what the worklist reads back is the study as recorded (identifiers aside)
    entry = {e.event.study_instance_uid: e for e in store.worklist()}["1.2.826.0.1.1"]
    assert entry.event == ct.event.model_copy(update={"accession_number": None})
    assert entry.study_date == date(2026, 11, 2)
    assert {(o.kind, o.sop_instance_uid) for o in entry.outputs} == {("SR", "1.2.826.0.1.1.901"),
                                                                     ("SEG", "1.2.826.0.1.1.902")}


def test_priors_newest_first_and_excluding_the_current_study(store) -> None:
    dated = {"1.2.826.0.2.1": date(2023, 5, 1), "1.2.826.0.2.2": date(2025, 6, 1),
             "1.2.826.0.2.3": date(2024, 5, 20), "1.2.826.0.2.9": date(2026, 11, 2)}  # .9: the study in process
    for uid, day in dated.items():
        store.record(cases.ct_result(uid, patient_key="pk-A", study_date=day))
    store.record(cases.ct_result("1.2.826.0.2.4", patient_key="pk-A", study_date=None))  # undated
    store.record(cases.ct_result("1.2.826.0.2.5", patient_key="pk-B", study_date=date(2024, 1, 1)))  # other patient
    store.record(cases.mg_result("1.2.826.0.2.6", patient_key="pk-A", study_date=date(2024, 1, 1)))  # other modality

    priors = store.priors("pk-A", "CT", date(2026, 11, 2), exclude_study_uid="1.2.826.0.2.9")
    assert [p.study_instance_uid for p in priors] == ["1.2.826.0.2.2", "1.2.826.0.2.3", "1.2.826.0.2.1"]
    assert [p.study_date for p in priors] == [date(2025, 6, 1), date(2024, 5, 20), date(2023, 5, 1)]
    assert priors[0].event.findings == cases.ct_result("1.2.826.0.2.2").event.findings  # parsed back whole
    # without a date every other study of the patient counts, the undated one last
    undated = store.priors("pk-A", "CT", None, exclude_study_uid="1.2.826.0.2.9")
    assert [p.study_instance_uid for p in undated] == ["1.2.826.0.2.2", "1.2.826.0.2.3", "1.2.826.0.2.1",
                                                       "1.2.826.0.2.4"]
    assert store.priors("pk-A", "CT", date(2023, 5, 1), exclude_study_uid="x") == []  # strictly before
    assert [p.study_instance_uid for p in store.priors("pk-A", "MG", None, "x")] == ["1.2.826.0.2.6"]
    assert store.priors("pk-unknown", "CT", None, "x") == []


def test_no_clear_identifiers_are_stored(store_url, tmp_path) -> None:
    store = open_store(store_url)
    try:
        # an event that carries identifiers (a program that allows them upstream), headers full of them
        store.record(cases.ct_result("1.2.826.0.3.1", patient_id=cases.PATIENT_ID))
        store.record(cases.mg_result("1.2.826.0.3.2"))
        text = repr(rows_of(store))
        for identifier in cases.IDENTIFIERS:
            assert identifier not in text
        assert "pk-1" in text and "pk-2" in text  # patients only by their key
        if store_url.startswith("sqlite"):  # nothing left in free pages or the write-ahead log either
            store.engine.dispose()
            database = Path(store_url.removeprefix("sqlite:///"))
            raw = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
            assert raw and not any(i.encode() in raw for i in cases.IDENTIFIERS)
    finally:
        store.close()
    allowed = open_store(store_url, allow_patient_identifiers=True)  # a program that allows them keeps them
    try:
        allowed.record(cases.ct_result("1.2.826.0.3.1", patient_id=cases.PATIENT_ID))
        event = {e.event.study_instance_uid: e.event for e in allowed.worklist()}["1.2.826.0.3.1"]
        assert (event.patient_id, event.accession_number) == (cases.PATIENT_ID, cases.ACCESSION)
    finally:
        allowed.close()


def test_worklist_by_priority_then_arrival(store) -> None:
    t = cases.T0
    store.record(cases.mg_result("1.2.826.0.4.1", priority="LOW", exam_score=1, arrived=t - timedelta(hours=5)))
    store.record(cases.ct_result("1.2.826.0.4.2", priority="HIGH", arrived=t))
    store.record(cases.ct_result("1.2.826.0.4.3", priority="URGENT", lung_rads="4B", arrived=t))
    store.record(cases.ct_result("1.2.826.0.4.4", priority="HIGH", arrived=t - timedelta(minutes=30)))
    store.record(cases.mg_result("1.2.826.0.4.5", priority="ROUTINE", arrived=t - timedelta(hours=1)))
    rows = store.worklist()
    assert [(e.event.priority, e.event.study_instance_uid[-1]) for e in rows] == [
        ("URGENT", "3"), ("HIGH", "4"), ("HIGH", "2"), ("ROUTINE", "5"), ("LOW", "1")]
    assert rows[1].event.arrived_at == t - timedelta(minutes=30)  # times come back as aware UTC
    assert [e.event.study_instance_uid for e in store.worklist(limit=2)] == ["1.2.826.0.4.3", "1.2.826.0.4.4"]
    with pytest.raises(ValueError, match="limit"):
        store.worklist(limit=0)


def test_sink_paths_and_discard(store, tmp_path) -> None:
    sink = StoreSink(store, files_dir=tmp_path / "out")
    sink.add(cases.ct_result("1.2.826.0.5.1"))
    sink.add(cases.ct_result("1.2.826.0.5.2"))
    sink.discard("1.2.826.0.5.2")  # dead-lettered: never stored
    sink.flush()
    rows = store.worklist()
    assert [e.event.study_instance_uid for e in rows] == ["1.2.826.0.5.1"]
    assert {o.kind: o.path for o in rows[0].outputs} == {
        "SR": str(tmp_path / "out" / "sr" / "1.2.826.0.5.1.901.dcm"),
        "SEG": str(tmp_path / "out" / "seg" / "1.2.826.0.5.1.902.dcm")}


LOOKBACK = (LookbackCandidate(center_mm=(-61.25, 20.5, -140.75), mean_diameter_mm=4.1, volume_mm3=36.1,
                               detection_score=0.2734),
            LookbackCandidate(center_mm=(30.0, -5.0, -90.0), mean_diameter_mm=2.3, volume_mm3=6.4, detection_score=0.12))


def test_lookback_candidates_are_kept_with_the_study_and_come_back_with_the_prior(store) -> None:
    prior = replace(cases.ct_result("1.2.826.0.7.1", patient_key="pk-L", study_date=date(2025, 1, 2)),
                    lookback_candidates=LOOKBACK)
    sink = StoreSink(store)  # the sink writes them in the study's own transaction
    sink.add(prior)
    sink.add(cases.mg_result("1.2.826.0.7.2", patient_key="pk-L", study_date=date(2025, 1, 3)))
    sink.flush()
    (found,) = store.priors("pk-L", "CT", date(2026, 1, 5), exclude_study_uid="1.2.826.0.7.9")
    assert found.lookback_candidates == LOOKBACK  # exactly, highest score first
    assert found.event.findings == prior.event.findings  # never findings
    assert store.priors("pk-L", "MG", None, "x")[0].lookback_candidates == ()
    store.record(prior)  # a replay leaves the same rows
    assert [r[:2] for r in rows_of(store)["lookback_candidates"]] == [("1.2.826.0.7.1", 0), ("1.2.826.0.7.1", 1)]
    store.record(replace(prior, lookback_candidates=LOOKBACK[1:]))  # read again: what this read kept replaces them
    assert store.priors("pk-L", "CT", None, "x")[0].lookback_candidates == LOOKBACK[1:]
    with store.engine.begin() as conn:  # a study deleted takes its look-back candidates with it
        conn.execute(delete(studies).where(studies.c.study_instance_uid == "1.2.826.0.7.1"))
    assert rows_of(store)["lookback_candidates"] == []


def test_migration_0003_adds_and_removes_the_lookback_table(store_url) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    from oncostream.store.migrate import _config, upgrade
    from oncostream.store.sql import normalise_url

    if store_url.startswith("sqlite"):
        Path(store_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engine = create_engine(normalise_url(store_url))
    try:
        upgrade(engine, "0002")  # a store of the previous release, holding a study
        with engine.connect() as conn:
            assert "lookback_candidates" not in inspect(conn).get_table_names()
        upgrade(engine)
        with engine.connect() as conn:
            assert current_revision(engine) == "0003" and "lookback_candidates" in inspect(conn).get_table_names()
        config = _config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0002")
        with engine.connect() as conn:
            assert current_revision(engine) == "0002"
            assert "lookback_candidates" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.integration
def test_database_gone_is_a_transient_sink_error(postgres, postgres_store_url) -> None:
    import psycopg

    from oncostream.services.postgres import USER

    store = open_store(postgres_store_url)
    sink = StoreSink(store)
    sink.add(cases.ct_result("1.2.826.0.6.1"))
    name = postgres_store_url.rsplit("/", 1)[1]
    with psycopg.connect(host="127.0.0.1", port=postgres.extra["port"], user=USER, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # every connection of the store is cut
    with pytest.raises(SinkError) as caught:
        sink.flush()
    assert not caught.value.permanent and caught.value.studies == ("1.2.826.0.6.1",)
    with psycopg.connect(host="127.0.0.1", port=postgres.extra["port"], user=USER, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # the fixture drops it again
    sink.store.close()
    with pytest.raises(ValueError, match="SQLite or PostgreSQL"):
        open_store("mysql://nobody@127.0.0.1/none")
    with pytest.raises(StoreError) as refused:  # nothing listens on port 1: refused when opened, worth a retry
        open_store(f"postgresql://{USER}@127.0.0.1:1/none")
    assert refused.value.transient


def test_oncostream_run_records_every_triaged_study(tmp_path) -> None:
    """The store is one of `oncostream run`'s sinks (delivery_sinks): each study of triage.jsonl is in it."""
    import argparse
    import os

    from oncostream.app.run import main_run
    from oncostream.contracts import TriageEvent
    from oncostream.synth.command import write_studies

    write_studies(tmp_path / "in", mammo=1, ldct=0, seed=11, size="small")
    out = tmp_path / "out"
    assert main_run(argparse.Namespace(path=tmp_path / "in", out=out, metrics_port=None, triton=None,
                                       size="small")) == 0
    (line,) = (out / "triage.jsonl").read_text().splitlines()
    published = TriageEvent.model_validate_json(line)
    store = open_store(os.environ["ONCOSTREAM_STORE_URL"])  # the test's own store (tests/fixtures/store.py)
    try:
        (entry,) = store.worklist()
        assert entry.event == published.model_copy(update={"accession_number": None, "patient_id": None})
        assert {o.sop_instance_uid for o in entry.outputs if o.kind == "SR"} == {published.sr_sop_instance_uid}
    finally:
        store.close()


def _open_after(barrier, url: str, results) -> None:
    barrier.wait(timeout=60)
    try:
        store = open_store(url)
        results.put(current_revision(store.engine))
        store.close()
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_starting_together_migrate_once(backend, request, tmp_path) -> None:
    """Worker processes opening an empty store at the same moment: one migrates, the others wait for it and
    find the schema current (PostgreSQL: an advisory lock in migrations/env.py; one SQLite file: a lock file
    beside it); none meets a half-made schema. Threads of one process take turns too (a lock in
    oncostream.store.migrate)."""
    import multiprocessing
    import threading

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        url = request.getfixturevalue("postgres_store_url")

    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_open_after, args=(barrier, url, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert outcomes == [head_revision()] * 4

    import queue

    barrier, same_process = threading.Barrier(3), queue.Queue()
    threads = [threading.Thread(target=_open_after, args=(barrier, url, same_process))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [same_process.get(timeout=1) for _ in threads] == [head_revision()] * 3
