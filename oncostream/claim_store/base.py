"""The claim-store interface: where producers put instances too large for a Kafka record.

A producer ``write``s the bytes and puts the returned claim check (uri, sha256, size) on Kafka; the
worker ``read``s it back, ``delete``s it once the study that used it is committed, and ``collect``s
what is left behind by age. The claim check arrives in an untrusted record, so every implementation
reads only objects inside its own configured place, compares the size before reading a byte, never
reads more than the claim check declares, and verifies the SHA-256 after.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import ClassVar
from urllib.parse import urlparse

from oncostream.contracts import ClaimCheck
from oncostream.errors import RejectedInstance

# every store keeps an object under "<sha256><OBJECT_SUFFIX>"
OBJECT_SUFFIX = ".dcm"


def size_mismatch() -> RejectedInstance:
    """The stored object's size (known before reading) is not the size its claim check declares."""
    return RejectedInstance("claim_check_mismatch", "claim-checked object does not have the size its claim "
                            "check declares")


def verified(data: bytes, claim: ClaimCheck) -> bytes:
    """``data`` when its size and SHA-256 are the claim check's; RejectedInstance otherwise."""
    if len(data) != claim.size or hashlib.sha256(data).hexdigest() != claim.sha256:
        raise RejectedInstance("claim_check_mismatch", "claim-checked object differs in size or SHA-256 from "
                               "its claim check")
    return data


class ClaimStore(ABC):
    """One configured claim store; ``scheme`` is the URI scheme of the claim checks it writes and reads."""

    scheme: ClassVar[str]
    max_age_s: float

    @abstractmethod
    def write(self, data: bytes) -> ClaimCheck:
        """Store ``data`` under its SHA-256 (content-addressed: writing it again is harmless)."""

    @abstractmethod
    def read(self, claim: ClaimCheck) -> bytes:
        """The object's bytes. RejectedInstance ``claim_check_refused`` when the URI points outside
        the store, ``claim_check_unresolvable`` when the object is gone, ``claim_check_mismatch`` when
        size or SHA-256 differ from the claim check."""

    @abstractmethod
    def delete(self, claim: ClaimCheck) -> bool:
        """Remove the object of a claim check whose study is committed; False if it was not ours or gone."""

    @abstractmethod
    def collect(self, now: float | None = None) -> int:
        """Delete objects older than ``max_age_s`` (epoch seconds ``now``); returns how many."""

    def owns(self, uri: str) -> bool:
        """Whether ``uri`` has this store's scheme (it may still point outside the store: ``read`` decides)."""
        return urlparse(uri).scheme == self.scheme
