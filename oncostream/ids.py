"""Identifiers as logs may show them: never in clear, so that log files and log pipelines hold no
identifier that links back to a patient."""

from __future__ import annotations

import hashlib
import hmac


def loggable_uid(uid: str | None) -> str:
    """A short, stable stand-in for a DICOM UID in log lines: ``uid:`` and the first 12 hex digits
    of its SHA-256 (the same UID always gives the same text, so one study can be followed through
    the logs and matched by whoever holds the UID). ``-`` when there is none."""
    if not uid:
        return "-"
    return "uid:" + hashlib.sha256(str(uid).encode("utf-8", "replace")).hexdigest()[:12]


def patient_pseudonym(patient_id: str | None, issuer_of_patient_id: str | None, key: bytes) -> str | None:
    """The key that links one patient's screening rounds: HMAC-SHA256 (RFC 2104) of IssuerOfPatientID
    and PatientID under the program's secret ``key``, as 64 hex digits. Without the key the pseudonym
    cannot be recomputed from a PatientID (a plain hash of a short identifier could be reversed by
    trying every identifier). None when PatientID is empty: such studies are never linked.

    The two values are joined with a separator that neither may contain (0x1F, unit separator), so
    ("A", "BC") and ("AB", "C") differ.
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise ValueError("key: the pseudonym key must be at least 16 bytes")
    pid = str(patient_id or "").strip()
    if not pid:
        return None
    issuer = str(issuer_of_patient_id or "").strip()
    message = f"{issuer}\x1f{pid}".encode("utf-8", "replace")
    return hmac.new(bytes(key), message, hashlib.sha256).hexdigest()
