"""Schema migrations of the results store (Alembic, scripts under ``migrations/versions/``)."""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from oncostream.store.schema import VERSION_TABLE

log = logging.getLogger(__name__)

SCRIPT_LOCATION = "oncostream.store:migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def head_revision() -> str:
    """The newest migration, which the schema in ``oncostream.store.schema`` describes."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at; None for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


# Alembic's migration context is one module-level global: threads of one process (a worker's sink and its
# prior lookup opening stores together) must take turns; processes take turns on PostgreSQL's advisory lock
# (migrations/env.py) or, for one SQLite file, on a lock file beside it
_IN_PROCESS = threading.Lock()


@contextmanager
def _across_processes(engine: Engine) -> Iterator[None]:
    """SQLite has no advisory lock, and its DDL does not wait for another connection's: processes opening
    one empty file together (two workers on the default store) would both create the version table."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` in one transaction where the database allows (PostgreSQL)."""
    config = _config()
    with _IN_PROCESS, _across_processes(engine), engine.begin() as conn:
        config.attributes["connection"] = conn
        before = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
        command.upgrade(config, revision)
        after = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    if after != before:
        log.info("results store migrated from %s to %s", before or "empty", after)
