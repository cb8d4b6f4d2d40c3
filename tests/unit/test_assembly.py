"""Assembly: 4-view mammography exams, LDCT series by expected count, quiet timeouts, replays."""

from __future__ import annotations

import copy

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from ingest.assembly import MAMMO_VIEWS, Assembler
from oncostream.settings import Settings


class FakeClock:
    """A settable clock: time is an input of the assembler, not a sleep."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def mammo_view(study_uid: str, key: str) -> Dataset:
    ds = Dataset()
    ds.Modality = "MG"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.ImageLaterality = key[0]
    ds.ViewPosition = key[1:]
    return ds


def ct_slices(n: int, spacing: float = 1.25, expected: int | None = None, drop: tuple[int, ...] = ()) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        if i in drop:
            continue
        ds = Dataset()
        ds.Modality = "CT"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100.0, -100.0, -50.0 + i * spacing]
        ds.ImagesInAcquisition = expected if expected is not None else n
        out.append(ds)
    return out


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def assembler(clock):
    return Assembler(Settings(assembly_timeout_s=10), clock=clock)


def test_mammo_exam_completes_on_fourth_standard_view(assembler):
    study = generate_uid()
    views = [mammo_view(study, k) for k in ("RMLO", "LCC", "RCC", "LMLO")]
    assert [assembler.add(v) for v in views[:3]] == [[], [], []]
    (done,) = assembler.add(views[3])
    assert not done.incomplete and done.missing == []
    assert [f"{d.ImageLaterality}{d.ViewPosition}" for d in done.datasets] == list(MAMMO_VIEWS)
    assert len(assembler) == 0


def test_mammo_quiet_timeout_closes_incomplete_and_names_missing_views(assembler, clock):
    study = generate_uid()
    for key in ("LCC", "LMLO", "RCC"):
        assembler.add(mammo_view(study, key))
    clock.now = 9.9
    assert assembler.expire() == []
    clock.now = 10.0
    (done,) = assembler.expire()
    assert done.incomplete and done.missing == ["RMLO"]


def test_redelivered_instance_is_ignored(assembler):
    study = generate_uid()
    lcc = mammo_view(study, "LCC")
    assembler.add(lcc, source=("t", 0, 5))
    assert assembler.add(lcc, source=("t", 0, 9)) == []
    rest = [assembler.add(mammo_view(study, k)) for k in ("LMLO", "RCC", "RMLO")]
    assert len(rest[-1]) == 1 and len(rest[-1][0].datasets) == 4


def test_non_screening_view_is_not_part_of_exam(assembler):
    study = generate_uid()
    spot = mammo_view(study, "LCC")
    spot.ViewPosition = "XCCL"
    assert assembler.add(spot) == []
    assert len(assembler) == 0


def _coded_view(value: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, "view"
    return item


def test_the_coded_view_decides_when_view_position_is_absent_or_disagrees(assembler):
    """View Code Sequence is Type 1 in the Mammography Image module, View Position Type 3: an exam
    written with codes only (SNOMED CT or the older SNOMED-RT codes) completes; a lateral view coded
    as such is not read as an MLO because View Position says so."""
    study = generate_uid()
    views = [mammo_view(study, key) for key in MAMMO_VIEWS]
    for ds, code in zip(views, ("399162004", "399368009", "R-10242", "R-10226")):
        del ds.ViewPosition
        ds.ViewCodeSequence = [_coded_view(code, "SCT" if code[0].isdigit() else "SRT")]
    done = [s for ds in views for s in assembler.add(ds)]
    assert len(done) == 1 and done[0].error is None and len(done[0].datasets) == 4
    lateral = mammo_view(generate_uid(), "LMLO")
    lateral.ViewCodeSequence = [_coded_view("399260004")]  # medio-lateral: not a screening view
    assert assembler.add(lateral) == [] and len(assembler) == 0


def test_ct_series_completes_at_expected_count_sorted_by_position(assembler):
    slices = ct_slices(20)
    shuffled = slices[::2] + slices[1::2]
    results = [assembler.add(ds) for ds in shuffled]
    assert all(r == [] for r in results[:-1])
    (done,) = results[-1]
    z = [float(d.ImagePositionPatient[2]) for d in done.datasets]
    assert z == sorted(z) and not done.incomplete


def test_ct_localizer_is_dropped(assembler):
    slices = ct_slices(5)
    localizer = copy.deepcopy(slices[0])
    localizer.SOPInstanceUID = generate_uid()
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert assembler.add(localizer) == []
    done = [s for ds in slices for s in assembler.add(ds)]
    assert len(done) == 1 and localizer.SOPInstanceUID not in {d.SOPInstanceUID for d in done[0].datasets}


def test_ct_gap_reported_on_timeout(assembler, clock):
    slices = ct_slices(10, drop=(4,), expected=10)
    for ds in slices:
        assert assembler.add(ds) == []
    clock.now = 60
    (done,) = assembler.expire()
    assert done.incomplete
    assert done.missing[0] == "1 of 10 slices"
    assert any("irregular slice spacing" in m for m in done.missing)


def test_watermark_and_rebalance_drop(assembler):
    a = ct_slices(3, expected=3)
    b = ct_slices(3, expected=3)
    assembler.add(a[0], source=("dicom", 0, 10))
    assembler.add(b[0], source=("dicom", 1, 4))
    assembler.add(a[1], source=("dicom", 0, 12))
    assert assembler.pending_offsets() == {("dicom", 0): 10, ("dicom", 1): 4}
    assembler.drop_partitions({("dicom", 1)})
    assert assembler.pending_offsets() == {("dicom", 0): 10}
    (done,) = assembler.add(a[2], source=("dicom", 0, 13))
    assert done.sources == [("dicom", 0, 10), ("dicom", 0, 12), ("dicom", 0, 13)]
    assert assembler.pending_offsets() == {}


def test_a_study_on_a_paused_partition_is_not_quiet_until_the_age_limit(clock):
    """Backpressure pauses a partition with a part-read study: its next instances wait unread in Kafka,
    so the quiet clock must not close it incomplete (the absolute age limit still does)."""
    assembler = Assembler(Settings(assembly_timeout_s=10, max_study_age_s=100), clock=clock)
    paused, flowing = generate_uid(), generate_uid()
    for key in ("LCC", "LMLO"):
        assembler.add(mammo_view(paused, key), source=("t", 0, len(key)))
        assembler.add(mammo_view(flowing, key), source=("t", 1, len(key)))
    clock.now = 50.0
    assembler.keep_alive({("t", 0)})
    (closed,) = assembler.expire()
    assert closed.study_instance_uid == flowing and closed.incomplete
    assembler.keep_alive(set())  # resumed: the full quiet time from the last keep-alive
    clock.now = 59.9
    assert assembler.expire() == []
    clock.now = 100.0
    assembler.keep_alive({("t", 0)})
    (aged,) = assembler.expire()
    assert aged.study_instance_uid == paused and aged.incomplete
