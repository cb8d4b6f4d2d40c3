"""The claim store reads only its own regular files and cleans up after itself."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from ingest.kafka_source import ClaimCheckResolver, KafkaMessage, instance_bytes
from oncostream.claim_store import DirectoryClaimStore
from oncostream.contracts import CONTENT_TYPE_CLAIM_CHECK, ClaimCheck
from oncostream.errors import RejectedInstance
from oncostream.streaming import write_claim_check

DATA = b"DICM-like bytes " * 64


def _claim(uri: str, data: bytes = DATA) -> ClaimCheck:
    return ClaimCheck(uri=uri, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def test_written_objects_are_private(tmp_path):
    store_dir = tmp_path / "claims"
    claim = write_claim_check(DATA, store_dir)
    path = Path(claim.uri.removeprefix("file://"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o700
    assert DirectoryClaimStore(store_dir).read(claim) == DATA


def _outside_file(tmp_path: Path) -> Path:
    outside = tmp_path / "secret.txt"
    outside.write_bytes(DATA)
    return outside


def _symlink_to_outside(tmp_path: Path, store: Path) -> Path:
    link = store / f"{hashlib.sha256(DATA).hexdigest()}.dcm"
    link.symlink_to(_outside_file(tmp_path))
    return link


def _fifo(tmp_path: Path, store: Path) -> Path:
    fifo = store / "pipe.dcm"
    os.mkfifo(fifo)
    return fifo


def _dotdot(tmp_path: Path, store: Path) -> str:
    _outside_file(tmp_path)
    return store.as_uri() + "/../secret.txt"


# each builds (tmp_path, store dir) -> a path or URI that must be refused without being read
HOSTILE_CLAIMS = {
    "etc-passwd": (lambda tmp, store: "file:///etc/passwd", "claim_check_refused"),
    "dev-zero": (lambda tmp, store: "file:///dev/zero", "claim_check_refused"),
    "outside-the-store": (lambda tmp, store: _outside_file(tmp).as_uri(), "claim_check_refused"),
    "dot-dot-out-of-the-store": (_dotdot, "claim_check_refused"),
    "symlink-in-store-to-outside": (lambda tmp, store: _symlink_to_outside(tmp, store).as_uri(),
                                    "claim_check_refused"),
    "fifo-in-store": (lambda tmp, store: _fifo(tmp, store).as_uri(), "claim_check_refused"),
    "other-host": (lambda tmp, store: "file://pacs.example/claims/x.dcm", "claim_check_refused"),
    "missing": (lambda tmp, store: (store / "gone.dcm").as_uri(), "claim_check_unresolvable"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CLAIMS))
def test_hostile_claim_checks_are_refused_without_reading(tmp_path, name):
    build, reason = HOSTILE_CLAIMS[name]
    store = tmp_path / "claims"
    store.mkdir()
    uri = build(tmp_path, store)
    started = time.monotonic()
    with pytest.raises(RejectedInstance) as err:
        DirectoryClaimStore(store).read(_claim(uri if isinstance(uri, str) else uri.as_uri()))
    assert time.monotonic() - started < 5, "a FIFO or device must not block the reader"
    assert err.value.reason == reason
    assert "passwd" not in err.value.detail and str(len(DATA)) not in err.value.detail


def test_size_is_checked_before_reading(tmp_path):
    """A 1 GiB sparse file under a claim of a few bytes is refused by its size, not read."""
    store = DirectoryClaimStore(tmp_path)
    claim = store.write(DATA)
    path = Path(claim.uri.removeprefix("file://"))
    with path.open("r+b") as handle:
        handle.truncate(1 << 30)
    with pytest.raises(RejectedInstance) as err:
        store.read(claim)
    assert err.value.reason == "claim_check_mismatch"
    assert str(1 << 30) not in err.value.detail


def test_resolver_refuses_etc_passwd_through_instance_bytes(tmp_path):
    passwd_size = Path("/etc/passwd").stat().st_size
    claim = ClaimCheck(uri="file:///etc/passwd", sha256="0" * 64, size=passwd_size)
    message = KafkaMessage(data=claim.model_dump_json().encode(), origin="t/0/0", topic="t", partition=0, offset=0,
                           headers={"content-type": CONTENT_TYPE_CLAIM_CHECK})
    with pytest.raises(RejectedInstance) as err:
        instance_bytes(message, ClaimCheckResolver(1 << 20, store=DirectoryClaimStore(tmp_path)))
    assert err.value.reason == "claim_check_refused"
    assert str(passwd_size) not in err.value.detail


def test_file_scheme_cannot_be_replaced(tmp_path):
    with pytest.raises(ValueError, match="scheme"):
        ClaimCheckResolver(1 << 20, store=DirectoryClaimStore(tmp_path)).register("file", lambda uri: b"")


def test_committed_deletes_published_objects_and_keeps_dead_lettered_ones(tmp_path):
    store = DirectoryClaimStore(tmp_path)
    resolver = ClaimCheckResolver(1 << 20, store=store)
    published, rejected, later = store.write(b"a" * 10), store.write(b"b" * 10), store.write(b"c" * 10)
    resolver.resolve(published, source=("t", 0, 5))
    resolver.resolve(rejected, source=("t", 0, 6))
    resolver.resolve(later, source=("t", 0, 9))
    assert resolver.committed({("t", 0): 8}, published=[("t", 0, 5), ("t", 0, 9)]) == 1
    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert remaining == sorted([f"{rejected.sha256}.dcm", f"{later.sha256}.dcm"])


def test_collect_removes_objects_older_than_the_age(tmp_path):
    store = DirectoryClaimStore(tmp_path, max_age_s=60)
    old, new = store.write(b"old"), store.write(b"new")
    old_path = Path(old.uri.removeprefix("file://"))
    os.utime(old_path, (time.time() - 3600, time.time() - 3600))
    assert store.collect() == 1
    assert not old_path.exists() and Path(new.uri.removeprefix("file://")).exists()
