"""The commit rule on its own: a committed offset never passes an instance of an unpublished study."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oncostream.streaming import Watermark, lowest_offsets, merge_lowest

P0, P1 = ("dicom", 0), ("dicom", 1)

CASES = [
    # (consumed offsets per partition, held lowest offsets, expected commit)
    pytest.param({P0: [0, 1, 2]}, {}, {P0: 3}, id="nothing-held-commits-past-last-consumed"),
    pytest.param({P0: [0, 1, 2]}, {P0: 1}, {P0: 1}, id="held-study-stops-the-watermark"),
    pytest.param({P0: [0, 1, 2]}, {P0: 0}, {P0: 0}, id="held-at-first-offset-commits-zero"),
    pytest.param({P0: [5, 6], P1: [0]}, {P1: 0}, {P0: 7, P1: 0}, id="partitions-independent"),
    pytest.param({P0: [3]}, {P1: 9}, {P0: 4}, id="held-on-other-partition-ignored"),
    pytest.param({}, {P0: 2}, {}, id="nothing-consumed-nothing-to-commit"),
]


@pytest.mark.parametrize(("consumed", "held", "expected"), CASES)
def test_to_commit(consumed, held, expected):
    watermark = Watermark()
    for partition, offsets in consumed.items():
        for offset in offsets:
            watermark.consumed(partition, offset)
    assert watermark.to_commit(held) == expected


def test_commit_only_moves_forward():
    watermark = Watermark()
    for offset in range(4):
        watermark.consumed(P0, offset)
    watermark.committed(watermark.to_commit({}))
    assert watermark.position(P0) == 4
    assert watermark.to_commit({}) == {}, "same position again is not a new commit"
    assert watermark.to_commit({P0: 2}) == {}, "a commit never goes backwards"
    watermark.consumed(P0, 4)
    assert watermark.to_commit({}) == {P0: 5}


def test_forget_restarts_a_revoked_partition():
    watermark = Watermark()
    watermark.consumed(P0, 7)
    watermark.committed({P0: 8})
    watermark.forget([P0])
    assert watermark.position(P0) is None
    assert watermark.to_commit({}) == {}
    watermark.consumed(P0, 3)  # replayed from an older commit by the next owner
    assert watermark.to_commit({}) == {P0: 4}


def test_negative_offset_is_refused():
    with pytest.raises(ValueError, match="offset"):
        Watermark().consumed(P0, -1)


def test_lowest_offsets_and_merge():
    low = lowest_offsets([("dicom", 0, 9), ("dicom", 0, 4), ("dicom", 1, 2)])
    assert low == {P0: 4, P1: 2}
    assert merge_lowest(low, {P0: 6, ("other", 0): 1}) == {P0: 4, P1: 2, ("other", 0): 1}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.booleans()), min_size=1, max_size=60))
def test_never_passes_an_unpublished_instance(events):
    """Instances arrive in offset order and belong to studies 0..7; a study is published at random
    moments. At every step the commit is at most the lowest offset of any unpublished study."""
    watermark = Watermark()
    studies: dict[int, list[int]] = {}
    published: set[int] = set()
    for offset, (study, publish_now) in enumerate(events):
        if study in published:
            study = study + 100  # a published study does not take new instances; a new study does
        studies.setdefault(study, []).append(offset)
        watermark.consumed(P0, offset)
        if publish_now:
            published.add(study)
        held = lowest_offsets(("dicom", 0, o) for s, offs in studies.items() if s not in published for o in offs)
        offsets = watermark.to_commit(held)
        if P0 in offsets:
            unpublished = [o for s, offs in studies.items() if s not in published for o in offs]
            assert offsets[P0] <= min(unpublished, default=offset + 1)
            assert offsets[P0] <= offset + 1
            watermark.committed(offsets)
