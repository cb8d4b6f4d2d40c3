"""Results-store sink: every published study lands in the results store (oncostream.store), where the
worklist page and the next screening round's prior lookup find it.

add() turns a result into rows (no database work); flush() writes everything added since the last
flush in one transaction and commits it. A replayed study is upserted to identical rows, so at-least-once
delivery never duplicates. The store says the study is triaged (the worklist shows it), so the lifecycle
hands it a result only after every delivery sink (a PACS) has taken it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from oncostream.store import ResultsStore, StoreError
from oncostream.store.sql import PreparedStudy
from oncostream.study import StudyResult
from postprocess.base import Sink
from postprocess.errors import SinkError


class StoreSink(Sink):
    name = "store"
    announces_triage = True

    def __init__(self, store: ResultsStore, files_dir: Path | None = None):
        """``store`` is owned by the sink from now on (closed with it); ``files_dir``: the folder a FileSink
        writes the same results to, so the store knows each output's path."""
        if not isinstance(store, ResultsStore):
            raise TypeError(f"store: want a ResultsStore, got {type(store).__name__}")
        self.store = store
        self.files_dir = Path(files_dir) if files_dir is not None else None
        self._pending: dict[str, PreparedStudy] = {}
        self._lock = threading.Lock()

    def add(self, result: StudyResult) -> None:
        prepared = self.store.prepare(result, files_dir=self.files_dir)
        with self._lock:
            self._pending[prepared.study_instance_uid] = prepared  # a re-add (retry) replaces, never doubles

    def flush(self, timeout_s: float = 60.0) -> None:
        with self._lock:
            batch = list(self._pending.values())
            if not batch:
                return
            try:
                self.store.write(batch)
            except StoreError as exc:
                uids = tuple(p.study_instance_uid for p in batch)
                if not exc.transient:  # the database refused these rows: sending them again will not help
                    for uid in uids:
                        self._pending.pop(uid, None)
                raise SinkError(self.name, exc.detail, permanent=not exc.transient, studies=uids) from exc
            self._pending.clear()

    def discard(self, study_instance_uid: str) -> None:
        with self._lock:
            self._pending.pop(study_instance_uid, None)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.store.close()
