"""PublishedAhead: what a commit's metadata must carry so a replay skips studies already published."""

from __future__ import annotations

from oncostream.streaming import PublishedAhead

P = ("oncostream.dicom", 0)


def test_published_study_beyond_the_commit_is_skipped_after_reload():
    ahead = PublishedAhead()
    ahead.published("MG:1.2.3", [(P[0], P[1], 0), (P[0], P[1], 2), (P[0], P[1], 3)])
    metadata = ahead.metadata(P, commit_offset=1)
    assert metadata and "1.2.3" not in metadata  # hashed: no identifiers in Kafka's offset store

    restarted = PublishedAhead()
    restarted.load(P, metadata)
    assert restarted.already_published(P, "MG:1.2.3", 2)
    assert restarted.already_published(P, "MG:1.2.3", 3)
    assert not restarted.already_published(P, "MG:1.2.3", 4), "a later resend of the study is new input"
    assert not restarted.already_published(P, "MG:9.9.9", 2)
    assert not restarted.already_published(("oncostream.dicom", 1), "MG:1.2.3", 2)


def test_entries_wholly_below_the_committed_offset_are_dropped_only_after_the_commit():
    ahead = PublishedAhead()
    ahead.published("CT:4.5", [(P[0], P[1], 5)])
    assert ahead.metadata(P, commit_offset=6) == ""
    assert ahead.already_published(P, "CT:4.5", 5), "kept until the commit succeeded"
    ahead.committed({P: 6})
    assert not ahead.already_published(P, "CT:4.5", 5)


def test_unreadable_metadata_is_ignored_and_oversized_metadata_is_not_sent():
    ahead = PublishedAhead()
    ahead.load(P, "not json")
    assert not ahead.already_published(P, "MG:1", 0)
    for i in range(500):
        ahead.published(f"MG:{i}", [(P[0], P[1], 1000 + i)])
    assert ahead.metadata(P, commit_offset=0) == ""


def test_forget_drops_revoked_partitions():
    ahead = PublishedAhead()
    ahead.published("MG:1", [(P[0], P[1], 3)])
    ahead.forget([P])
    assert not ahead.already_published(P, "MG:1", 3)


def test_a_partition_whose_metadata_changed_is_committed_again_at_the_same_offset():
    from oncostream.streaming import Watermark

    watermark, ahead = Watermark(), PublishedAhead()
    for offset in range(6):
        watermark.consumed(P, offset)
    held = {P: 0}  # a study holding offset 0 keeps the commit at 0 for as long as it assembles
    assert watermark.to_commit(held) == {P: 0}
    watermark.committed({P: 0})
    assert watermark.to_commit(held) == {}, "nothing new: no commit"
    ahead.published("MG:2", [(P[0], P[1], 3), (P[0], P[1], 4)])
    assert watermark.to_commit(held, refresh=ahead.changed) == {P: 0}, "same offset, new metadata"
    ahead.committed({P: 0})
    assert ahead.changed == set()
    assert ahead.already_published(P, "MG:2", 4)
