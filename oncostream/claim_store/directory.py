"""The directory claim store: large instances kept as files, named by their SHA-256, in one directory.

Producers write an object here and put a claim check (uri, sha256, size) on Kafka in its place; the
worker reads it back. The claim check arrives in an untrusted record, so reading is confined: only a
regular file inside this directory, opened without following a final symlink and without blocking
on a FIFO, its size checked against the claim before a byte is read, never more read than the claim
declares, and its SHA-256 checked after. Files are private to the service account (0600 in a 0700
directory), deleted once the study that used them is committed, and collected by age otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from oncostream.claim_store.base import OBJECT_SUFFIX, ClaimStore, size_mismatch, verified
from oncostream.contracts import ClaimCheck
from oncostream.errors import RejectedInstance

log = logging.getLogger(__name__)

_READ_STEP = 4 * 1024 * 1024
_SUFFIX = OBJECT_SUFFIX


class DirectoryClaimStore(ClaimStore):
    """One claim-check directory on a file system this process can see (``file:`` URIs)."""

    scheme = "file"

    def __init__(self, directory: Path, max_age_s: float = 7 * 24 * 3600.0):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a path, got {type(directory).__name__}")
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}")
        self.directory = Path(directory)
        self.max_age_s = max_age_s

    # -- producer side
    def write(self, data: bytes) -> ClaimCheck:
        """Store ``data`` under its SHA-256 (content-addressed: writing it again is harmless)."""
        digest = hashlib.sha256(data).hexdigest()
        root = self._root(create=True)
        path = root / f"{digest}{_SUFFIX}"
        try:
            current = os.lstat(path)
            if stat.S_ISREG(current.st_mode) and current.st_size == len(data):
                return ClaimCheck(uri=path.as_uri(), sha256=digest, size=len(data))
        except FileNotFoundError:
            pass
        tmp = root / f".{digest}.{os.getpid()}.tmp"
        # O_EXCL | O_NOFOLLOW: never write through a link someone planted under the temporary name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return ClaimCheck(uri=path.as_uri(), sha256=digest, size=len(data))

    # -- consumer side
    def read(self, claim: ClaimCheck) -> bytes:
        """The object's bytes. RejectedInstance ``claim_check_refused`` when the URI points outside
        the store or at anything but a regular file, ``claim_check_unresolvable`` when it is gone,
        ``claim_check_mismatch`` when size or SHA-256 differ. Details never describe what a refused
        path holds."""
        path = self._confined_path(claim.uri)
        try:
            # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError as exc:
            raise RejectedInstance("claim_check_unresolvable", "claim-checked object is not in the claim store "
                                   "(deleted or never written)") from exc
        except OSError as exc:  # ELOOP for a final symlink, EACCES, ...
            raise RejectedInstance("claim_check_refused", "claim check does not name a readable regular file "
                                   f"in the claim store ({type(exc).__name__})") from exc
        with os.fdopen(fd, "rb", buffering=0) as source:
            info = os.fstat(source.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise RejectedInstance("claim_check_refused", "claim check does not name a regular file")
            if info.st_size != claim.size:
                raise size_mismatch()
            data = _read_at_most(source, claim.size)
        return verified(data, claim)

    def delete(self, claim: ClaimCheck) -> bool:
        """Remove the object of a claim check whose study is committed; False if it was not ours or gone."""
        try:
            path = self._confined_path(claim.uri)
        except RejectedInstance:
            return False
        if path.name != f"{claim.sha256}{_SUFFIX}":
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def collect(self, now: float | None = None) -> int:
        """Delete objects (and abandoned temporary files) older than ``max_age_s``; returns how many."""
        now = time.time() if now is None else now
        root = self._root(create=False)
        if root is None:
            return 0
        removed = 0
        for entry in os.scandir(root):
            if not entry.is_file(follow_symlinks=False):
                continue
            if not (entry.name.endswith(_SUFFIX) or entry.name.endswith(".tmp")):
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > self.max_age_s:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("claim store: %d objects older than %.0f s deleted", removed, self.max_age_s)
        return removed

    # -- confinement
    def _root(self, create: bool) -> Path | None:
        if create:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        elif not self.directory.is_dir():
            return None
        return self.directory.resolve()

    def _confined_path(self, uri: str) -> Path:
        """The path a ``file:`` URI names, symlinks resolved, if it lies directly in the store."""
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise RejectedInstance("claim_check_refused", "claim check is not a file URI on this host")
        root = self._root(create=False)
        if root is None:
            raise RejectedInstance("claim_check_unresolvable", "the claim store directory does not exist here")
        try:
            path = Path(unquote(parsed.path)).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, NUL bytes
            raise RejectedInstance("claim_check_refused", "claim check path cannot be resolved") from exc
        if path.parent != root:
            raise RejectedInstance("claim_check_refused", "claim check points outside the claim store")
        return path


def _read_at_most(source, size: int) -> bytes:
    """Exactly the first ``size`` bytes (fewer if the file shrank), never more."""
    chunks, remaining = [], size
    while remaining > 0:
        chunk = source.read(min(remaining, _READ_STEP))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
