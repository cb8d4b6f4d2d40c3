"""The results store on SQLAlchemy Core: SQLite (embedded default) and PostgreSQL (production), one schema.

Every study is one transaction: its ``studies`` row is upserted first (on PostgreSQL that row lock
serialises two workers writing the same study), then its nodules, mammography findings, output
objects and LDCT look-back candidates (detections below the operating point, never reported, which the
next round's comparison looks back at) are replaced. A replayed study therefore leaves exactly the rows it left the first time
(delivery is at-least-once). Nothing that identifies a patient in clear is written: the patient is
``Study.patient_key``, and the stored event loses ``patient_id`` and ``accession_number`` (removed by
DICOM PS3.15's basic de-identification profile too) unless the program allows identifiers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import get_args

from pydantic import ValidationError
from sqlalchemy import Engine, create_engine, delete, event, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from oncostream.contracts import MammoCategory, MammoFinding, NoduleFinding, Priority, TriageEvent, read_triage_event
from oncostream.store.errors import StoreError
from oncostream.store.schema import lookback_candidates, mammo_findings, nodules, outputs, studies
from oncostream.study import LookbackCandidate, PriorStudy, StudyResult

log = logging.getLogger(__name__)

PRIORITY_RANK = {p: i for i, p in enumerate(get_args(Priority))}  # URGENT 0, HIGH 1, ROUTINE 2, LOW 3


@dataclass(frozen=True)
class StoredOutput:
    """One DICOM object a study produced: ``kind`` SR | SEG | SC; ``path`` where a file sink wrote it, if known."""

    kind: str
    sop_instance_uid: str
    series_instance_uid: str | None
    sop_class_uid: str | None
    path: str | None


@dataclass(frozen=True)
class WorklistEntry:
    """A stored study as the worklist shows it: the event (identifiers removed unless allowed) and outputs."""

    event: TriageEvent
    study_date: date | None
    outputs: tuple[StoredOutput, ...]


@dataclass(frozen=True)
class PreparedStudy:
    """The rows of one study, made from its StudyResult before any database is touched."""

    study_instance_uid: str
    study_row: dict
    nodule_rows: tuple[dict, ...]
    mammo_rows: tuple[dict, ...]
    output_rows: tuple[dict, ...]
    lookback_rows: tuple[dict, ...] = ()


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo is not None else value


def _aware_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _error(action: str, exc: SQLAlchemyError) -> StoreError:
    transient = isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)
    # the driver's message, not the statement's parameters: those could hold a study's values
    detail = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StoreError(f"results store: cannot {action}: {type(exc).__name__}: {detail}", transient=transient)


class ResultsStore:
    """Per study: the TriageEvent, patient key, dates, priority, nodules, mammography scores, output UIDs and
    LDCT look-back candidates. Use ``open_store(url)``, which migrates the schema to the current version first."""

    def __init__(self, engine: Engine, allow_patient_identifiers: bool = False):
        if not isinstance(engine, Engine):
            raise TypeError(f"engine: want a sqlalchemy Engine, got {type(engine).__name__}")
        self.engine = engine
        self.allow_patient_identifiers = bool(allow_patient_identifiers)

    def __repr__(self) -> str:
        return f"ResultsStore({self.engine.url.render_as_string(hide_password=True)})"

    # -- writing -----------------------------------------------------------------------------------------
    def prepare(self, result: StudyResult, files_dir: Path | None = None) -> PreparedStudy:
        """The rows ``result`` becomes; ``files_dir``: where a FileSink writes (``sr/``, ``seg/``,
        ``secondary/`` named by SOP Instance UID), so the outputs get their paths."""
        if not isinstance(result, StudyResult):
            raise TypeError(f"result: want a StudyResult, got {type(result).__name__}")
        ev = result.event
        uid = ev.study_instance_uid
        stored = ev if self.allow_patient_identifiers else ev.model_copy(
            update={"patient_id": None, "accession_number": None})
        category = ev.category
        mammo = isinstance(category, MammoCategory)
        study_row = {
            "study_instance_uid": uid,
            "patient_key": result.study.patient_key,
            "program": ev.program,
            "modality": ev.modality,
            "priority": ev.priority,
            "priority_rank": PRIORITY_RANK[ev.priority],
            "study_date": result.study.study_date,
            "arrived_at": _naive_utc(ev.arrived_at),
            "triaged_at": _naive_utc(ev.triaged_at),
            "lung_rads": None if mammo else category.lung_rads,
            "exam_score": category.exam_score if mammo else None,
            "density": category.density if mammo else None,
            "malignancy_probability": category.malignancy_probability if mammo else None,
            "recall": category.recall if mammo else None,
            "needs_human_review": ev.needs_human_review,
            "incomplete": ev.incomplete,
            "prior_study_instance_uid": ev.prior_study_instance_uid,
            "prior_interval_days": ev.prior_interval_days,
            "compared_with_prior": category.compared_with_prior,
            "sr_sop_instance_uid": ev.sr_sop_instance_uid,
            "schema_version": ev.schema_version,
            "event_json": stored.model_dump_json(),
        }
        nodule_rows, mammo_rows = [], []
        for index, f in enumerate(ev.findings):
            if isinstance(f, NoduleFinding):
                nodule_rows.append({
                    "study_instance_uid": uid, "finding_index": index, "tracking_uid": f.tracking_uid,
                    "center_x_mm": f.center_mm[0], "center_y_mm": f.center_mm[1], "center_z_mm": f.center_mm[2],
                    "mean_diameter_mm": f.mean_diameter_mm, "long_axis_mm": f.long_axis_mm,
                    "volume_mm3": f.volume_mm3, "composition": f.composition,
                    "malignancy_probability": f.malignancy_probability, "lung_rads": f.lung_rads,
                    "prior_tracking_uid": f.prior_tracking_uid, "diameter_change_mm": f.diameter_change_mm,
                    "volume_doubling_time_days": f.volume_doubling_time_days,
                    "volume_change_percent": f.volume_change_percent, "growing": f.growing,
                })
            elif isinstance(f, MammoFinding):
                mammo_rows.append({
                    "study_instance_uid": uid, "finding_index": index, "type": f.type,
                    "laterality": f.laterality, "view": f.view, "sop_instance_uid": f.sop_instance_uid,
                    "score": f.score, "center_row": f.center_px[0], "center_col": f.center_px[1],
                    "bbox_row0": f.bbox_px[0], "bbox_col0": f.bbox_px[1],
                    "bbox_row1": f.bbox_px[2], "bbox_col1": f.bbox_px[3], "new_since_prior": f.new_since_prior,
                })
        output_rows = {}
        for kind, sub, datasets in (("SR", "sr", [result.sr] if result.sr is not None else []),
                                    ("SEG", "seg", result.segs), ("SC", "secondary", result.secondary)):
            for ds in datasets:
                sop = str(ds.SOPInstanceUID)
                output_rows[sop] = {
                    "study_instance_uid": uid, "sop_instance_uid": sop, "kind": kind,
                    "series_instance_uid": str(ds.get("SeriesInstanceUID", "")) or None,
                    "sop_class_uid": str(ds.get("SOPClassUID", "")) or None,
                    "path": str(Path(files_dir) / sub / f"{sop}.dcm") if files_dir is not None else None,
                }
        # objects the event names that this result carries no dataset for (a sink that keeps events only)
        for kind, sop in ([("SR", ev.sr_sop_instance_uid)] if ev.sr_sop_instance_uid else []) + [
                ("SEG", s) for s in ev.seg_sop_instance_uids]:
            output_rows.setdefault(sop, {"study_instance_uid": uid, "sop_instance_uid": sop, "kind": kind,
                                         "series_instance_uid": None, "sop_class_uid": None, "path": None})
        lookback_rows = tuple({
            "study_instance_uid": uid, "candidate_index": index, "center_x_mm": c.center_mm[0],
            "center_y_mm": c.center_mm[1], "center_z_mm": c.center_mm[2], "mean_diameter_mm": c.mean_diameter_mm,
            "volume_mm3": c.volume_mm3, "detection_score": c.detection_score,
        } for index, c in enumerate(result.lookback_candidates))
        return PreparedStudy(uid, study_row, tuple(nodule_rows), tuple(mammo_rows), tuple(output_rows.values()),
                             lookback_rows)

    def write(self, prepared: Sequence[PreparedStudy]) -> None:
        """Write prepared studies in one transaction (all or none); a study written before is replaced."""
        if not prepared:
            return
        try:
            with self.engine.begin() as conn:
                for study in prepared:
                    row = study.study_row
                    stmt = self._upsert_statement().values(**row)
                    stmt = stmt.on_conflict_do_update(
                        index_elements=[studies.c.study_instance_uid],
                        set_={k: stmt.excluded[k] for k in row if k != "study_instance_uid"})
                    conn.execute(stmt)
                    for table, rows in ((nodules, study.nodule_rows), (mammo_findings, study.mammo_rows),
                                        (outputs, study.output_rows), (lookback_candidates, study.lookback_rows)):
                        conn.execute(delete(table).where(table.c.study_instance_uid == study.study_instance_uid))
                        if rows:
                            conn.execute(insert(table), list(rows))
        except SQLAlchemyError as exc:
            raise _error(f"record {len(prepared)} stud{'y' if len(prepared) == 1 else 'ies'}", exc) from exc

    def _upsert_statement(self):
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        elif self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            raise StoreError(f"results store: unsupported database {self.engine.dialect.name!r} "
                             "(SQLite or PostgreSQL)")
        return dialect_insert(studies)

    def record(self, result: StudyResult) -> None:
        """Store one study's result (idempotent: a replay leaves identical rows)."""
        self.write([self.prepare(result)])

    # -- reading -----------------------------------------------------------------------------------------
    def priors(self, patient_key: str, modality: str, before: date | None,
               exclude_study_uid: str) -> list[PriorStudy]:
        """The patient's earlier studies of ``modality``, newest first, each with its look-back candidates.
        With ``before``, only studies dated strictly before it (an undated study cannot be placed and is left
        out); without, every study."""
        if not isinstance(patient_key, str) or not patient_key:
            raise ValueError("patient_key: want a non-empty string")
        query = (select(studies.c.study_instance_uid, studies.c.study_date, studies.c.event_json)
                 .where(studies.c.patient_key == patient_key, studies.c.modality == modality,
                        studies.c.study_instance_uid != exclude_study_uid))
        if before is not None:
            query = query.where(studies.c.study_date < before)
        query = query.order_by(studies.c.study_date.desc().nulls_last(), studies.c.arrived_at.desc(),
                               studies.c.study_instance_uid)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
                lookback = self._lookback(conn, [r.study_instance_uid for r in rows])
        except SQLAlchemyError as exc:
            raise _error("look up priors", exc) from exc
        return [PriorStudy(study_instance_uid=r.study_instance_uid, study_date=r.study_date,
                           event=self._event(r.study_instance_uid, r.event_json),
                           lookback_candidates=tuple(lookback.get(r.study_instance_uid, ()))) for r in rows]

    @staticmethod
    def _lookback(conn, study_uids: list[str]) -> dict[str, list[LookbackCandidate]]:
        """The look-back candidates of these studies, in the order they were recorded (highest score first)."""
        by_study: dict[str, list[LookbackCandidate]] = {}
        if not study_uids:
            return by_study
        t = lookback_candidates
        query = (select(t).where(t.c.study_instance_uid.in_(study_uids))
                 .order_by(t.c.study_instance_uid, t.c.candidate_index))
        for r in conn.execute(query):
            by_study.setdefault(r.study_instance_uid, []).append(LookbackCandidate(
                center_mm=(r.center_x_mm, r.center_y_mm, r.center_z_mm), mean_diameter_mm=r.mean_diameter_mm,
                volume_mm3=r.volume_mm3, detection_score=r.detection_score))
        return by_study

    def worklist(self, limit: int = 200) -> list[WorklistEntry]:
        """The ``limit`` most pressing studies: by priority (URGENT first), then oldest arrival first, which
        within one priority is also least time left against the program's SLA."""
        if not isinstance(limit, int) or limit <= 0:
            raise ValueError(f"limit: want a positive integer, got {limit!r}")
        query = (select(studies.c.study_instance_uid, studies.c.study_date, studies.c.event_json)
                 .order_by(studies.c.priority_rank, studies.c.arrived_at, studies.c.study_instance_uid)
                 .limit(limit))
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
                uids = [r.study_instance_uid for r in rows]
                by_study: dict[str, list[StoredOutput]] = {u: [] for u in uids}
                if uids:
                    for o in conn.execute(select(outputs).where(outputs.c.study_instance_uid.in_(uids))
                                          .order_by(outputs.c.study_instance_uid, outputs.c.kind,
                                                    outputs.c.sop_instance_uid)):
                        by_study[o.study_instance_uid].append(StoredOutput(
                            o.kind, o.sop_instance_uid, o.series_instance_uid, o.sop_class_uid, o.path))
        except SQLAlchemyError as exc:
            raise _error("read the worklist", exc) from exc
        return [WorklistEntry(self._event(r.study_instance_uid, r.event_json), r.study_date,
                              tuple(by_study[r.study_instance_uid])) for r in rows]

    def count(self) -> int:
        """How many studies are stored."""
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(studies)).scalar_one())
        except SQLAlchemyError as exc:
            raise _error("count studies", exc) from exc

    @staticmethod
    def _event(study_instance_uid: str, event_json: str) -> TriageEvent:
        try:
            return read_triage_event(event_json)
        except ValidationError as exc:
            raise StoreError(f"results store: the stored event of study {study_instance_uid} no longer reads "
                             f"as a TriageEvent ({exc.error_count()} errors, first: {exc.errors()[0]['msg']})"
                             ) from exc
        except ValueError as exc:  # a schema version this code does not read
            raise StoreError(f"results store: the stored event of study {study_instance_uid}: {exc}") from exc

    def close(self) -> None:
        self.engine.dispose()


def normalise_url(url: str) -> str:
    """SQLAlchemy URL with oncostream's drivers: ``postgresql://`` means psycopg 3 (``postgresql+psycopg``)."""
    if not isinstance(url, str) or not url:
        raise ValueError("url: want an SQLAlchemy URL such as sqlite:///.oncostream/results.db or "
                         "postgresql://user@host:5432/oncostream")
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"url: the results store runs on SQLite or PostgreSQL, not {parsed.get_backend_name()!r}")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")  # a worker writing while the worklist reads waits, not fails
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (the worklist) never block the writer
    cursor.close()


def open_store(url: str, allow_patient_identifiers: bool = False) -> ResultsStore:
    """Connect to the store at ``url`` (SQLAlchemy URL), migrate its schema to the current version, return it.

    An SQLite file's folder is created. Keep passwords out of the URL (libpq's PGPASSFILE / PGPASSWORD
    supply them); the URL is only ever shown with its password hidden.
    """
    from oncostream.store.migrate import upgrade

    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        upgrade(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise _error(f"open {parsed.render_as_string(hide_password=True)}", exc) from exc
    except BaseException:
        engine.dispose()
        raise
    return ResultsStore(engine, allow_patient_identifiers=allow_patient_identifiers)


def rows_of(store: ResultsStore,
            tables: Iterable = (studies, nodules, mammo_findings, outputs, lookback_candidates)) -> dict:
    """Every row of the store's tables, in key order (tests compare replays with it)."""
    with store.engine.connect() as conn:
        return {t.name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]
                for t in tables}
