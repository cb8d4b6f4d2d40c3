"""The results store: every triaged study, its nodules, mammography scores and output UIDs, keyed by a
patient pseudonym so screening rounds can find their priors; the worklist page reads it.

SQLite is the embedded default (``ONCOSTREAM_STORE_URL``, default a file under ``.oncostream/``),
PostgreSQL the production database; one schema, migrated with Alembic when the store is opened.
"""

from oncostream.store.errors import StoreError
from oncostream.store.sql import ResultsStore, StoredOutput, WorklistEntry, open_store

__all__ = ["ResultsStore", "StoreError", "StoredOutput", "WorklistEntry", "open_store"]
