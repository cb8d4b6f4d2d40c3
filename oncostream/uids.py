"""Deterministic output UIDs: the same inputs and model versions always give the same UID, so a
replay after a crash republishes byte-identical identifiers (at-least-once delivery, idempotent results)."""

from __future__ import annotations

import hashlib

from pydicom.uid import UID

# 2.25 + a decimal UUID-sized integer is the ISO/IEC 9834-8 form: no registered root needed
_ROOT = "2.25."


def derive_uid(*parts: str) -> UID:
    """UID from the given parts (input UIDs, model versions, a role such as "sr" or "seg")."""
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError("derive_uid needs one or more non-empty strings")
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:16]
    return UID(_ROOT + str(int.from_bytes(digest, "big")))


def model_fingerprint(model_versions: dict[str, str]) -> str:
    """Stable text for a set of model versions, used as one part of derived UIDs."""
    return ",".join(f"{k}={v}" for k, v in sorted(model_versions.items()))
