"""Schema migrations of the results store (Alembic, scripts under ``migrations/versions/``)."""

from __future__ import annotations

import logging
import threading

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
_IN_PROCESS = threading.Lock()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` in one transaction where the database allows (PostgreSQL)."""
    config = _config()
    with _IN_PROCESS, engine.begin() as conn:
        config.attributes["connection"] = conn
        before = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
        command.upgrade(config, revision)
        after = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    if after != before:
        log.info("results store migrated from %s to %s", before or "empty", after)
