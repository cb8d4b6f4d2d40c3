"""Alembic environment of the results store: always run by oncostream.store on a connection it opened
(``config.attributes["connection"]``); there is no alembic.ini and no offline mode."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from oncostream.store.schema import VERSION_TABLE, metadata

# any constant: PostgreSQL serialises workers that start at once on an empty database
_MIGRATION_LOCK = 7_271_900_017

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    context.run_migrations()
