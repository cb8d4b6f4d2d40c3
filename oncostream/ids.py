"""Identifiers as logs may show them: never in clear, so that log files and log pipelines hold no
identifier that links back to a patient."""

from __future__ import annotations

import hashlib


def loggable_uid(uid: str | None) -> str:
    """A short, stable stand-in for a DICOM UID in log lines: ``uid:`` and the first 12 hex digits
    of its SHA-256 (the same UID always gives the same text, so one study can be followed through
    the logs and matched by whoever holds the UID). ``-`` when there is none."""
    if not uid:
        return "-"
    return "uid:" + hashlib.sha256(str(uid).encode("utf-8", "replace")).hexdigest()[:12]
