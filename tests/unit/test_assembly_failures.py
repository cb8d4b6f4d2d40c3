"""Assembly under bad input and load: every study fails alone, resends of a finished study are ignored,
and the pending set is bounded (pending studies, pending bytes, absolute age)."""

from __future__ import annotations

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from ingest.assembly import Assembler
from oncostream.errors import RejectedInstance
from oncostream.settings import Settings
from tests.unit.test_assembly import FakeClock, ct_slices, mammo_view


@pytest.fixture
def clock():
    return FakeClock()


def make(clock, **settings) -> Assembler:
    return Assembler(Settings(assembly_timeout_s=10, **settings), clock=clock)


def exam(study: str | None = None) -> list:
    study = study or generate_uid()
    return [mammo_view(study, k) for k in ("LCC", "LMLO", "RCC", "RMLO")]


def test_bad_images_in_acquisition_fails_its_series_alone_and_the_exam_in_the_same_tick_still_closes(clock):
    assembler = make(clock)
    views = exam()
    for ds in views[:3]:
        assert assembler.add(ds, source=("t", 0, len(views))) == []
    bad = ct_slices(2)
    tag = Tag("ImagesInAcquisition")  # as read from a file: pydicom keeps the text and only warns
    bad[1][tag] = RawDataElement(tag, "IS", 3, b"abc", 0, True, True)
    assert assembler.add(bad[0], source=("t", 1, 1)) == []
    with pytest.raises(RejectedInstance) as raised:
        assembler.add(bad[1], source=("t", 1, 2))
    assert raised.value.reason == "invalid_attribute"
    clock.now = 10.0
    closed = {s.modality: s for s in assembler.expire()}
    assert set(closed) == {"MG", "CT"}, "one study's failure must not take the other studies of the tick"
    assert closed["MG"].error is None and closed["MG"].missing == ["RMLO"]
    failed = closed["CT"]
    assert failed.error is not None and failed.error.reason == "invalid_attribute"
    assert failed.sources == [("t", 1, 1)], "the rest of the series goes to the dead-letter sink whole"
    assert len(assembler) == 0


@pytest.mark.parametrize("attribute", ["ImageOrientationPatient", "ImagePositionPatient"])
def test_ct_slice_without_geometry_is_refused_and_its_series_fails_whole(clock, attribute):
    assembler = make(clock)
    slices = ct_slices(2)
    for ds in slices:
        del ds[attribute]
    for i, ds in enumerate(slices):
        with pytest.raises(RejectedInstance) as raised:
            assembler.add(ds, source=("t", 0, i))
        assert raised.value.reason == "missing_geometry" and attribute in raised.value.detail
    good = ct_slices(3)
    done = [s for ds in good for s in assembler.add(ds, source=("t", 1, 0))]
    assert len(done) == 1 and done[0].error is None
    clock.now = 10.0
    (failed,) = assembler.expire()
    assert failed.error.reason == "missing_geometry" and failed.datasets == []


def test_a_close_that_raises_fails_only_that_study(clock, monkeypatch):
    import ingest.assembly as assembly

    assembler = make(clock)
    for ds in exam()[:2]:
        assembler.add(ds)
    slices = ct_slices(3, expected=5)
    for ds in slices:
        assembler.add(ds, source=("t", 0, 7))

    def broken(datasets, *args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(assembly, "sort_ct_series", broken)
    clock.now = 10.0
    closed = {s.modality: s for s in assembler.expire()}
    assert closed["MG"].error is None
    assert closed["CT"].error.reason == "assembly_failed" and "ZeroDivisionError" in closed["CT"].error.detail
    assert closed["CT"].sources == [("t", 0, 7)] * 3


def test_a_view_resent_after_its_exam_closed_is_ignored(clock):
    assembler = make(clock)
    views = exam()
    (done,) = [s for ds in views for s in assembler.add(ds)]
    assembler.finished(done.assembly_key)
    assert assembler.add(views[0]) == []
    assert len(assembler) == 0, "a resent view must not open a one-view exam that would replace the result"
    clock.now = 100.0
    assert assembler.expire() == []


def test_finished_memory_is_bounded(clock):
    assembler = make(clock, finished_memory=2)
    keys = []
    for _ in range(3):
        views = exam()
        (done,) = [s for ds in views for s in assembler.add(ds)]
        assembler.finished(done.assembly_key)
        keys.append(views)
    assert assembler.add(keys[0][0]) == [] and len(assembler) == 1  # forgotten: the oldest key
    assert assembler.add(keys[2][0]) == [] and len(assembler) == 1  # remembered


def test_resent_duplicates_do_not_keep_a_study_open(clock):
    assembler = make(clock)
    lcc = exam()[0]
    assembler.add(lcc)
    for t in range(1, 30):
        clock.now = float(t)
        assembler.add(lcc)
    (done,) = assembler.expire()
    assert done.incomplete


def test_pending_study_cap_closes_the_oldest_early_marked_incomplete(clock):
    assembler = make(clock, max_pending_studies=2)
    a, b, c = exam(), exam(), exam()
    assembler.add(a[0])
    clock.now = 1.0
    assembler.add(b[0])
    clock.now = 2.0
    (early,) = assembler.add(c[0])
    assert early.study_instance_uid == a[0].StudyInstanceUID
    assert early.incomplete and any("pending-study cap" in m for m in early.missing)
    assert len(assembler) == 2


def test_pending_bytes_cap_closes_the_oldest_early(clock):
    assembler = make(clock, max_pending_bytes=1000)
    a, b = exam(), exam()
    assembler.add(a[0], nbytes=600)
    clock.now = 1.0
    (early,) = assembler.add(b[0], nbytes=600)
    assert early.study_instance_uid == a[0].StudyInstanceUID
    assert any("pending-bytes cap" in m for m in early.missing)


def test_absolute_age_closes_a_study_that_keeps_receiving(clock):
    assembler = make(clock, max_study_age_s=25)
    slices = ct_slices(40)
    closed = []
    for t, ds in enumerate(slices[:30]):
        clock.now = float(t)
        closed += assembler.add(ds)
        closed += assembler.expire()
    assert len(closed) == 1 and any("age limit" in m for m in closed[0].missing)
