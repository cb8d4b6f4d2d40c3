"""File sink: `triage.jsonl` (one TriageEvent per line) plus `sr/`, `seg/`, `secondary/` DICOM files.

Idempotent like every sink: a replayed study (same SR UID) adds no second line, and DICOM files are
named by SOPInstanceUID, so rewriting one leaves one file. Replays are byte-identical; different content
under an existing SOP Instance UID is refused (a permanent SinkError), never written over it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from oncostream.study import StudyResult
from postprocess.base import Sink
from postprocess.errors import SinkError

log = logging.getLogger(__name__)


class FileSink(Sink):
    name = "files"
    announces_triage = True

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        for sub in ("sr", "seg", "secondary"):
            (self.out_dir / sub).mkdir(parents=True, exist_ok=True)
        self._triage_path = self.out_dir / "triage.jsonl"
        self._seen: set[tuple[str, str | None]] = set()
        if self._triage_path.exists():
            self._load_seen()
        self._triage = self._triage_path.open("a", encoding="utf-8")
        self._written: list[Path] = []

    def _load_seen(self) -> None:
        """Read what earlier runs wrote. A crash while writing leaves a torn last line: that study was never
        flushed (so never acknowledged) and will be processed again, so the torn tail is cut off."""
        data = self._triage_path.read_bytes()
        good = 0  # bytes up to the end of the last complete, readable line
        for line in data.splitlines(keepends=True):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("no line end")
                if line.strip():
                    event = json.loads(line)
                    self._seen.add((event["study_instance_uid"], event.get("sr_sop_instance_uid")))
            except (ValueError, KeyError, TypeError):
                if good + len(line) < len(data):
                    raise SinkError(self.name, f"{self._triage_path} has an unreadable line before its end; "
                                    "it was not written by a crash (refusing to guess)") from None
                log.warning("cutting a torn last line (%d bytes) off %s", len(line), self._triage_path)
                with self._triage_path.open("r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
                return
            good += len(line)

    def add(self, result: StudyResult) -> None:
        try:
            for sub, datasets in (("sr", [result.sr] if result.sr is not None else []),
                                  ("seg", result.segs), ("secondary", result.secondary)):
                for ds in datasets:
                    path = self.out_dir / sub / f"{ds.SOPInstanceUID}.dcm"
                    tmp = path.with_suffix(".tmp")
                    ds.save_as(tmp, enforce_file_format=True)
                    if path.exists() and path.read_bytes() != tmp.read_bytes():
                        # replays are byte-identical; different bytes under one UID would silently
                        # replace a result someone may have read
                        tmp.unlink()
                        raise SinkError(self.name, f"refusing different content under existing SOP Instance "
                                        f"UID {ds.SOPInstanceUID}", permanent=True,
                                        studies=(result.event.study_instance_uid,))
                    os.replace(tmp, path)
                    self._written.append(path)
            key = (result.event.study_instance_uid, result.event.sr_sop_instance_uid)
            if key not in self._seen:
                self._triage.write(result.event.model_dump_json() + "\n")
                self._seen.add(key)
        except OSError as exc:
            raise SinkError(self.name, f"cannot write outputs of study {result.event.study_instance_uid}: {exc}") from exc

    def flush(self, timeout_s: float = 60.0) -> None:
        try:
            self._triage.flush()
            os.fsync(self._triage.fileno())
        except OSError as exc:
            raise SinkError(self.name, f"cannot flush {self._triage_path}: {exc}") from exc
        self._written.clear()

    def close(self) -> None:
        self.flush()
        self._triage.close()
