"""Canonicalisation: what is refused (with its reason), what is flagged for review, and the frames and
orientations the models are given. The metamorphic suite (tests/conformance) checks the answers."""

from __future__ import annotations

import copy
import io
from datetime import datetime, timezone

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes

from ingest.assembly import Assembler
from ingest.canonical.ldct import CanonicalOrientation
from ingest.canonical.mammo import canonical_frame, review_reasons
from ingest.decode import parse_instance
from oncostream.errors import RejectedInstance, StudyFailed
from oncostream.settings import Settings
from oncostream.study import BoxMask, Study
from oncostream.synth import vendors


@pytest.fixture(scope="module")
def mammo_views():
    from oncostream.synth.mammo import make_mammo_phantom, mammo_datasets

    phantom = make_mammo_phantom(5, size="small")
    return phantom, mammo_datasets(phantom)


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _modifier(code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _for_processing_class(ds):
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2.1"


def _for_processing_intent(ds):
    ds.PresentationIntentType = "FOR PROCESSING"


def _spot(ds):
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence([_modifier(codes.SCT.SpotCompression)])


def _magnified(ds):
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence([_modifier(codes.SCT.Magnification)])


def _synthesised(ds):
    ds.ImageType = ["DERIVED", "PRIMARY", "", "GENERATED_2D"]


def _rotated(ds):
    ds.PatientOrientation = ["R", "F"]


def _modality_lut(ds):
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = np.arange(4096, dtype="<u2").tobytes()
    ds.ModalityLUTSequence = Sequence([item])


def _no_spacing(ds):
    del ds.PixelSpacing
    del ds.ImagerPixelSpacing


REFUSALS = {
    "for_processing": (_for_processing_class, "for_processing"),
    "for_processing_intent": (_for_processing_intent, "for_processing"),
    "spot_compression": (_spot, "spot_compression"),
    "magnification": (_magnified, "magnification"),
    "synthesised_2d": (_synthesised, "synthesised_2d"),
    "rotated": (_rotated, "orientation"),
    "modality_lut": (_modality_lut, "modality_lut"),
    "no_spacing": (_no_spacing, "pixel_spacing"),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_views_the_models_cannot_read_are_refused_with_a_reason(case, mammo_views):
    change, reason = REFUSALS[case]
    ds = copy.deepcopy(mammo_views[1][0])
    change(ds)
    with pytest.raises(RejectedInstance) as refused:
        parse_instance(_bytes(ds), max_bytes=1 << 30)
    assert refused.value.reason == reason and refused.value.detail
    parse_instance(_bytes(mammo_views[1][0]), max_bytes=1 << 30)  # the unchanged view is read


def test_an_implant_asks_for_a_reader(mammo_views):
    ds = copy.deepcopy(mammo_views[1][0])
    assert review_reasons(ds) == []
    ds.BreastImplantPresent = "YES"
    assert review_reasons(ds) == ["breast implant"]


def test_an_implant_sets_needs_human_review_on_the_event(mammo_views):
    from ingest.backends.embedded import EmbeddedBackend
    from ingest.mammo import infer_mammo_study
    from postprocess.results import build_result

    datasets = copy.deepcopy(mammo_views[1])
    datasets[2].BreastImplantPresent = "YES"
    study = Study(study_instance_uid=str(datasets[0].StudyInstanceUID), modality="MG", datasets=datasets,
                  arrived_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    backend = EmbeddedBackend()
    try:
        event = build_result(study, infer_mammo_study(backend, study), Settings()).event
    finally:
        backend.close()
    assert event.needs_human_review and event.review_reasons == ["RCC: breast implant"]


@pytest.mark.parametrize("index", [0, 2], ids=["left-view", "right-view"])
def test_without_patient_orientation_the_chest_wall_is_found_in_the_image(index, mammo_views):
    phantom, datasets = mammo_views
    name = ("LCC", "LMLO", "RCC", "RMLO")[index]
    with_orientation = canonical_frame(datasets[index], phantom.views[name], name[0], name[1:])
    ds = copy.deepcopy(datasets[index])
    del ds.PatientOrientation
    without = canonical_frame(ds, phantom.views[name], name[0], name[1:])
    assert without.orientation_source == "image" and with_orientation.orientation_source == "PatientOrientation"
    assert without.flip_cols == with_orientation.flip_cols == (name[0] == "R")
    np.testing.assert_array_equal(without.mask, with_orientation.mask)


def test_the_breast_decides_the_field_not_the_detector(mammo_views):
    phantom, datasets = mammo_views
    frame = canonical_frame(datasets[0], phantom.views["LCC"], "L", "CC")
    bigger = vendors.mg_larger_detector([copy.deepcopy(datasets[0])])[0]
    moved = canonical_frame(bigger, bigger.pixel_array, "L", "CC")
    top_margin = int(round(30.0 / float(datasets[0].PixelSpacing[0])))
    assert moved.roi[0] - frame.roi[0] == pytest.approx(top_margin, abs=1.0)
    assert moved.roi[1] == frame.roi[1] == 0.0  # the field starts at the chest wall
    assert np.mean(moved.mask != frame.mask) < 0.01


# --- LDCT ----------------------------------------------------------------------------------------

AXES = np.eye(3)


@pytest.mark.parametrize("directions,step,order,flip", [
    (AXES[[2, 1, 0]], AXES[2], (0, 1, 2), (False, False, False)),  # the training orientation
    (np.stack([-AXES[2], AXES[1], AXES[0]]), -AXES[2], (0, 1, 2), (True, False, False)),  # feet-first stack
    (np.stack([-AXES[2], AXES[0], AXES[1]]), -AXES[2], (0, 2, 1), (True, False, False)),  # rows and columns swapped
    (np.stack([AXES[2], -AXES[1], -AXES[0]]), AXES[2], (0, 1, 2), (False, True, True)),  # both in-plane mirrored
], ids=["canonical", "feet-first", "transposed", "mirrored"])
def test_axis_aligned_stacks_are_reordered_not_resampled(directions, step, order, flip):
    orientation = CanonicalOrientation.from_directions(directions, step * 10, (4, 5, 6), "1.2.3")
    assert orientation.order == order and orientation.flip == flip
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    canonical = orientation.to_canonical(volume)
    np.testing.assert_array_equal(orientation.to_stored(canonical), volume)
    index = np.array([1.0, 2.0, 3.0])
    assert canonical[tuple(index.astype(int))] == volume[tuple(orientation.stored_index(index).astype(int))]
    # a nodule mask kept as its box goes back to the stored grid as the whole-grid mask does
    dense = np.zeros(canonical.shape, bool)
    dense[1:3, 0:2, 2:5] = np.random.default_rng(1).random((2, 2, 3)) > 0.3
    box = orientation.mask_to_stored(BoxMask.from_dense(dense))
    np.testing.assert_array_equal(box.dense(), orientation.to_stored(dense))
    assert box.shape == volume.shape


def _rotation_about_x(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


def test_an_oblique_plane_is_refused():
    rotate = _rotation_about_x(5.0)
    directions = np.stack([rotate @ AXES[2], rotate @ AXES[1], AXES[0]])
    with pytest.raises(StudyFailed) as failed:
        CanonicalOrientation.from_directions(directions, directions[0], (4, 5, 6), "1.2.3")
    assert failed.value.reason == "oblique_series" and "5.0 degrees" in failed.value.detail


def test_gantry_tilt_is_refused():
    tilted_step = _rotation_about_x(12.0) @ AXES[2]
    with pytest.raises(StudyFailed) as failed:
        CanonicalOrientation.from_directions(AXES[[2, 1, 0]], tilted_step * 30, (4, 5, 6), "1.2.3")
    assert failed.value.reason == "gantry_tilt" and "12.0 degrees" in failed.value.detail


@pytest.fixture(scope="module")
def small_series():
    from oncostream.synth.ldct import ldct_datasets, make_ldct_phantom

    return ldct_datasets(make_ldct_phantom(3, size="small"))


def test_a_tilted_series_fails_with_its_reason_through_the_served_path(small_series):
    from ingest.ldct import infer_ldct_study

    datasets = copy.deepcopy(small_series)
    for k, ds in enumerate(datasets):  # each slice shifted along y: slices step off their normal
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.3 * k, z]
    study = Study(study_instance_uid=str(datasets[0].StudyInstanceUID), modality="CT", datasets=datasets,
                  arrived_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(StudyFailed) as failed:
        infer_ldct_study(None, study)  # refused before any model runs
    assert failed.value.reason == "gantry_tilt"


def test_a_study_without_an_original_axial_series_fails_with_the_reasons(small_series):
    assembler = Assembler(Settings())
    for ds in copy.deepcopy(small_series):
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL", "MPR"]
        assembler.add(ds, modality="CT")
    (study,) = assembler.flush_all()
    assert study.error is not None and study.error.reason == "no_screening_series"
    assert "image type mpr" in study.error.detail


@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.7",
                                       "1.2.840.10008.5.1.4.1.1.66.4"], ids=["dose-report", "secondary-capture", "seg"])
def test_objects_that_come_with_a_study_but_no_pipeline_reads_are_not_screened(sop_class, mammo_views):
    from oncostream.errors import NotScreened

    ds = copy.deepcopy(mammo_views[1][0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    with pytest.raises(NotScreened) as ignored:
        parse_instance(_bytes(ds), max_bytes=1 << 30)
    assert ignored.value.reason == "not_screened" and sop_class in ignored.value.detail


def test_tomosynthesis_is_refused_not_ignored(mammo_views):
    from oncostream.errors import NotScreened

    ds = copy.deepcopy(mammo_views[1][0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.13.1.3"
    with pytest.raises(RejectedInstance) as refused:
        parse_instance(_bytes(ds), max_bytes=1 << 30)
    assert not isinstance(refused.value, NotScreened) and refused.value.reason == "unknown_sop_class"


def test_twelve_bit_content_declared_as_sixteen_bits_is_refused_not_read_darker(mammo_views):
    """Bits Stored overstated (12-bit values, 16 declared, no rescale): read as declared the image would be
    16x darker than anything the models saw, so the exam fails with the reason; the same values rescaled
    to 16 bits (an honest 16-bit image) are read."""
    from ingest.mammo import canonical_views

    overstated = copy.deepcopy(mammo_views[1])
    for ds in overstated:
        assert int(ds.BitsStored) == 12
        ds.BitsStored, ds.HighBit = 16, 15
    with pytest.raises(StudyFailed) as failed:
        canonical_views(overstated, "1.2.3")
    assert failed.value.reason == "pixel_range" and "Bits Stored 16" in failed.value.detail
    images, frames = canonical_views(vendors.mg_sixteen_bits(copy.deepcopy(mammo_views[1])), "1.2.3")
    assert len(frames) == 4
