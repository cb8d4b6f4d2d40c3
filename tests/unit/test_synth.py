"""Synthetic studies (`oncostream synth`): determinism, UIDs, geometry, truth, DICOM validity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID
from scipy import ndimage

from oncostream.cli import main as cli_main
from oncostream.synth.command import study_seed, write_studies
from oncostream.synth.ground_truth import LdctTruth, MammoTruth
from oncostream.synth.ldct import ldct_datasets, make_ldct_phantom
from oncostream.synth.mammo import VIEWS, make_mammo_phantom, mammo_datasets
from tests.dicom_tools import dciodvfy_errors


def _read_dir(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


@pytest.fixture(scope="module")
def ldct_small():
    return make_ldct_phantom(3, "small", nodules=[
        {"diameter_mm": 12.0, "composition": "solid", "margin": "spiculated"},
        {"diameter_mm": 7.0, "composition": "ground_glass", "margin": "smooth"},
        {"diameter_mm": 9.0, "composition": "part_solid", "margin": "lobulated"},
        {"diameter_mm": 4.0, "composition": "calcified", "margin": "smooth"},
    ])


@pytest.fixture(scope="module")
def mammo_small():
    return make_mammo_phantom(5, "small", malignant=True, density="c")


# --- layout and determinism -------------------------------------------------------------------


def test_layout_has_every_study_and_its_truth(synth_dir):
    folders = sorted(p.name for p in synth_dir.iterdir() if p.is_dir())
    assert folders == ["ct-0000", "ct-0001", "ground_truth", "mg-0000", "mg-0001", "mg-0002"]
    truths = {p.stem: json.loads(p.read_text()) for p in (synth_dir / "ground_truth").glob("*.json")}
    assert len(truths) == 5
    for folder in ("mg-0000", "mg-0001", "mg-0002", "ct-0000", "ct-0001"):
        datasets = _read_dir(synth_dir / folder)
        study = datasets[0].StudyInstanceUID
        assert {ds.StudyInstanceUID for ds in datasets} == {study}
        truth = truths[study]
        model = MammoTruth if folder.startswith("mg") else LdctTruth
        model.model_validate(truth)
        if folder.startswith("mg"):
            assert sorted(truth["sop_instance_uids"].values()) == sorted(ds.SOPInstanceUID for ds in datasets)
        else:
            assert sorted(truth["sop_instance_uids"]) == sorted(ds.SOPInstanceUID for ds in datasets)
        for ds in datasets:
            assert (synth_dir / folder / f"{ds.SOPInstanceUID}.dcm").is_file()


@pytest.mark.parametrize("kind", ["mammo", "ldct"])
def test_same_seed_gives_identical_bytes(tmp_path, kind):
    counts = {"mammo": (1, 0), "ldct": (0, 1)}[kind]
    first = write_studies(tmp_path / "a", *counts, seed=11, size="small")
    second = write_studies(tmp_path / "b", *counts, seed=11, size="small")
    for a, b in zip(first, second):
        names = sorted(p.name for p in a.iterdir())
        assert names == sorted(p.name for p in b.iterdir())
        for name in names:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    truth_a = sorted((tmp_path / "a" / "ground_truth").iterdir())
    truth_b = sorted((tmp_path / "b" / "ground_truth").iterdir())
    assert [p.read_text() for p in truth_a] == [p.read_text() for p in truth_b]


def test_different_seeds_differ():
    a, b = make_mammo_phantom(1, "small"), make_mammo_phantom(2, "small")
    assert a.truth.study_instance_uid != b.truth.study_instance_uid
    assert not np.array_equal(a.views["LCC"], b.views["LCC"])
    assert study_seed(0, 1) != study_seed(1, 0)


def test_uids_are_valid_and_unique(synth_dir):
    seen: dict[str, set[str]] = {"sop": set(), "study": set(), "series": set()}
    sop_count = 0
    for path in synth_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID):
            assert UID(uid).is_valid, uid
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        seen["sop"].add(ds.SOPInstanceUID)
        seen["study"].add(ds.StudyInstanceUID)
        seen["series"].add(ds.SeriesInstanceUID)
        sop_count += 1
    assert len(seen["sop"]) == sop_count
    assert len(seen["study"]) == 5
    assert len(seen["series"]) == 5
    assert not seen["sop"] & seen["study"] and not seen["study"] & seen["series"]


def test_synthetic_demographics_only(synth_dir):
    for path in list(synth_dir.glob("mg-0000/*.dcm"))[:1] + list(synth_dir.glob("ct-0000/*.dcm"))[:1]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert str(ds.PatientName).startswith("SYNTH^")
        assert ds.PatientID.startswith("SYNTH-")
        assert ds.Manufacturer == "oncostream-synth"
        assert ds.AccessionNumber and len(ds.StudyDate) == 8
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


# --- DICOM validity (dicom3tools) -------------------------------------------------------------


@pytest.mark.parametrize("folder", ["mg-0000", "ct-0000"])
def test_dciodvfy_reports_no_errors(synth_dir, folder):
    paths = sorted((synth_dir / folder).glob("*.dcm"))
    if folder.startswith("ct"):
        paths = [paths[0], paths[len(paths) // 2], paths[-1]]
    for path in paths:
        assert dciodvfy_errors(path) == [], path.name


# --- LDCT -------------------------------------------------------------------------------------


def test_ldct_geometry_matches_spacing(synth_dir):
    datasets = _read_dir(synth_dir / "ct-0000")
    first = datasets[0]
    assert first.SOPClassUID == pydicom.uid.CTImageStorage
    assert (first.Rows, first.Columns) == (128, 128)
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert all(int(ds.ImagesInAcquisition) == len(datasets) for ds in datasets)
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    assert np.allclose(iop, [1, 0, 0, 0, 1, 0])
    normal = np.cross(iop[:3], iop[3:])
    positions = sorted(float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))) for ds in datasets)
    steps = np.diff(positions)
    assert np.allclose(steps, float(first.SliceThickness), atol=1e-3)
    for ds in datasets:
        assert float(ds.SliceLocation) == pytest.approx(float(ds.ImagePositionPatient[2]))
    # instance order is inferior -> superior, matching the truth's SOP order
    by_number = sorted(datasets, key=lambda ds: int(ds.InstanceNumber))
    assert [float(ds.ImagePositionPatient[2]) for ds in by_number] == positions


def test_ldct_hu_round_trip_through_rescale(ldct_small):
    datasets = ldct_datasets(ldct_small)
    for k in (0, len(datasets) // 2, len(datasets) - 1):
        ds = datasets[k]
        stored = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
        hu = stored.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        expected = np.clip(np.rint(ldct_small.hu_low[k]), -1024, 3071)
        assert np.array_equal(hu, expected)
        position = np.array(ds.ImagePositionPatient, dtype=float)
        assert position == pytest.approx(np.array(ldct_small.origin_mm) + [0, 0, k * ldct_small.spacing_mm[0]])


def test_ldct_truth_is_consistent_with_labels(ldct_small):
    p = ldct_small
    assert len(p.truth.nodules) == 4
    origin = np.array(p.origin_mm)
    dz, dy, dx = p.spacing_mm
    voxel_mm3 = dz * dy * dx
    for k, nodule in enumerate(p.truth.nodules, start=1):
        x, y, z = np.array(nodule.center_mm) - origin
        index = (int(round(z / dz)), int(round(y / dy)), int(round(x / dx)))
        assert p.labels[index] == k
        assert p.hu_clean[index] > -900, "a nodule centre is denser than aerated lung"
        voxels = int((p.labels == k).sum())
        if nodule.diameter_mm >= 6:
            # the labelled volume agrees with the truth volume to within partial-volume error
            assert 0.5 < voxels * voxel_mm3 / nodule.volume_mm3 < 1.6
    solid = p.truth.nodules[0]
    assert solid.malignant and solid.margin == "spiculated"
    assert not p.truth.nodules[3].malignant


def test_ldct_low_dose_is_noisier_but_unbiased(ldct_small):
    p = ldct_small
    body = p.hu_clean > -200  # soft tissue and bone
    low = (p.hu_low - p.hu_clean)[body]
    full = (p.hu_full - p.hu_clean)[body]
    # quantum noise scales as 1 / sqrt(dose): a quarter dose doubles it
    assert 1.6 < low.std() / full.std() < 2.4
    assert abs(float(low.mean())) < 0.25 * float(low.std())


def test_ldct_nodule_composition_sets_density(ldct_small):
    p = ldct_small
    origin = np.array(p.origin_mm)
    values = {}
    for k, nodule in enumerate(p.truth.nodules, start=1):
        x, y, z = np.array(nodule.center_mm) - origin
        index = (int(round(z / p.spacing_mm[0])), int(round(y / p.spacing_mm[1])), int(round(x / p.spacing_mm[2])))
        values[nodule.composition] = p.hu_clean[index]
    assert values["ground_glass"] < -300 < values["solid"]
    assert values["calcified"] > values["solid"]


# --- mammography ------------------------------------------------------------------------------


def test_mammo_views_and_attributes(mammo_small):
    datasets = mammo_datasets(mammo_small)
    assert [f"{ds.ImageLaterality}{ds.ViewPosition}" for ds in datasets] == list(VIEWS)
    for ds in datasets:
        assert ds.SOPClassUID == pydicom.uid.DigitalMammographyXRayImageStorageForPresentation
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert 12 <= ds.BitsStored <= 14
        assert (ds.Rows, ds.Columns) == (512, 416)
        assert float(ds.PixelSpacing[0]) == pytest.approx(0.4)
        assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(0.4)
        assert int(mammo_small.views[f"{ds.ImageLaterality}{ds.ViewPosition}"].max()) < 2 ** ds.BitsStored


@pytest.mark.parametrize("view", VIEWS)
def test_mammo_chest_wall_side(mammo_small, view):
    """Left views have the chest wall at column 0, right views at the last column."""
    breast = mammo_small.breast_masks[view]
    w = breast.shape[1]
    left_half, right_half = breast[:, : w // 2].sum(), breast[:, w // 2:].sum()
    if view.startswith("L"):
        assert breast[:, 0].mean() > 0.4 and left_half > right_half
    else:
        assert breast[:, -1].mean() > 0.4 and right_half > left_half


def test_mammo_lesion_on_both_views_inside_breast(mammo_small):
    truth = mammo_small.truth
    assert truth.malignant and truth.density == "c"
    assert any(lesion.malignant for lesion in truth.lesions)
    for lesion in truth.lesions:
        assert sorted(v.view for v in lesion.views) == ["CC", "MLO"]
        distance = {}
        for v in lesion.views:
            name = f"{lesion.laterality}{v.view}"
            assert truth.sop_instance_uids[name] == v.sop_instance_uid
            breast = mammo_small.breast_masks[name]
            r0, c0, r1, c1 = v.bbox_px
            assert 0 <= r0 < r1 <= breast.shape[0] and 0 <= c0 < c1 <= breast.shape[1]
            assert breast[r0:r1, c0:c1].all(), f"{name} bbox leaves the breast"
            assert r0 <= v.center_px[0] < r1 and c0 <= v.center_px[1] < c1
            assert mammo_small.lesion_masks[name][r0:r1, c0:c1].any()
            w = breast.shape[1]
            distance[v.view] = v.center_px[1] if lesion.laterality == "L" else w - 1 - v.center_px[1]
        # same depth from the chest wall on CC and MLO
        assert abs(distance["CC"] - distance["MLO"]) <= 2


def test_mammo_density_categories_are_ordered():
    """The share of dense (bright) breast area grows from BI-RADS a to d."""
    shares = []
    for density in "abcd":
        p = make_mammo_phantom(1, "small", malignant=False, density=density)
        image = p.views["LCC"].astype(np.float64) / (2 ** p.bits_stored - 1)
        breast = p.breast_masks["LCC"]
        shares.append(float((image[breast] > 0.5).mean()))
    assert shares == sorted(shares) and shares[0] < 0.3 and shares[-1] > 0.7, shares


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_mammo_masses_stand_out_in_a_fatty_breast_at_small_size(seed):
    """At 0.4 mm a mass (>= 8 mm) is brighter than the tissue right around it on both views."""
    p = make_mammo_phantom(seed, "small", malignant=True, density="a")
    masses = [lesion for lesion in p.truth.lesions if lesion.type == "mass"]
    assert masses
    for lesion in masses:
        assert lesion.size_mm >= 8
        for v in lesion.views:
            name = f"{lesion.laterality}{v.view}"
            image = p.views[name].astype(np.float64)
            labels, _ = ndimage.label(p.lesion_masks[name])
            mass = labels == labels[v.center_px]
            ring = (ndimage.binary_dilation(mass, iterations=6) & ~ndimage.binary_dilation(mass, iterations=2)
                    & p.breast_masks[name])
            assert image[mass].mean() - image[ring].mean() > 0.5 * image[ring].std(), name


def test_mammo_malignant_share_decided_by_seed():
    malignant = [make_mammo_phantom(seed, "small").truth.malignant for seed in range(20)]
    assert 4 <= sum(malignant) <= 12


def test_cli_writes_studies(tmp_path):
    assert cli_main(["synth", "--out", str(tmp_path), "--mammo", "1", "--ldct", "0", "--size", "small"]) == 0
    assert len(list((tmp_path / "mg-0000").glob("*.dcm"))) == 4
    truth = MammoTruth.model_validate_json(next((tmp_path / "ground_truth").glob("*.json")).read_text())
    assert set(truth.sop_instance_uids) == set(VIEWS)
