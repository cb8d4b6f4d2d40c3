"""DirectorySource yields every file under a folder in sorted order, minus sidecars and hidden files."""

from __future__ import annotations

import pytest

from ingest.directory import DirectorySource


def test_yields_files_recursively_sorted_skipping_sidecars_and_hidden(tmp_path):
    for relative in ["b/2.dcm", "a/1.dcm", "a/1.json", "a/.hidden.dcm", ".cache/x.dcm", "c.bin"]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(relative.encode())
    with DirectorySource(tmp_path) as source:
        messages = list(source)
    assert [m.origin for m in messages] == [str(tmp_path / r) for r in ["a/1.dcm", "b/2.dcm", "c.bin"]]
    assert messages[0].data == b"a/1.dcm"
    assert messages[0].headers == {} and messages[0].topic is None


def test_broken_files_are_still_yielded(broken_dir):
    assert len(list(DirectorySource(broken_dir))) == 6


def test_root_must_be_a_directory(tmp_path):
    with pytest.raises(ValueError, match="root"):
        DirectorySource(tmp_path / "absent")
