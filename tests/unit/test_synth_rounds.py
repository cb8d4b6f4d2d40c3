"""Screening rounds in the generator: the same patient again, nodules grown / stable / resolved / new,
an interval cancer, with the truth that says which is which."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pydicom
import pytest

from oncostream.synth.rounds import ISSUER, LdctRoundPlan, write_rounds

NODULES = [{"diameter_mm": 10.0, "composition": "solid", "margin": "smooth", "malignant": False},
           {"diameter_mm": 9.0, "composition": "solid", "margin": "smooth", "malignant": False},
           {"diameter_mm": 7.0, "composition": "solid", "margin": "smooth", "malignant": False}]
PLAN = LdctRoundPlan(changes=("stable", "grown", "resolved"),
                     new_nodules=({"diameter_mm": 6.5, "composition": "solid", "margin": "smooth",
                                   "malignant": False},),
                     interval_days=400, growth_mm=(None, 4.0, None))


@pytest.fixture(scope="module")
def rounds_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rounds")
    write_rounds(out, mammo=1, ldct=1, seed=5, size="small", rounds=2, ldct_plans={0: {2: PLAN}},
                 ldct_nodules={0: NODULES}, interval_cancers={0: True})
    return out


def _truth(folder, kind):
    (found,) = [json.loads(p.read_text()) for p in (folder / "ground_truth").glob("*.json")
                if json.loads(p.read_text())["kind"] == kind]
    return found


def _first(folder):
    return pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)


@pytest.mark.parametrize("kind, prefix", [("ldct", "ct-0000"), ("mammo", "mg-0000")])
def test_same_patient_new_study_12_to_24_months_later(rounds_dir, kind, prefix):
    one, two = _first(rounds_dir / "round-1" / prefix), _first(rounds_dir / "round-2" / prefix)
    assert one.PatientID == two.PatientID and one.IssuerOfPatientID == two.IssuerOfPatientID == ISSUER
    assert one.StudyInstanceUID != two.StudyInstanceUID and one.AccessionNumber != two.AccessionNumber
    days = (dt.datetime.strptime(two.StudyDate, "%Y%m%d") - dt.datetime.strptime(one.StudyDate, "%Y%m%d")).days
    assert 365 <= days <= 730
    truth = _truth(rounds_dir / "round-2", kind)
    assert truth["round"] == 2 and truth["prior_study_instance_uid"] == one.StudyInstanceUID
    assert truth["interval_days"] == days


def test_ldct_nodules_stable_grown_resolved_new_with_true_follow_up(rounds_dir):
    one, two = _truth(rounds_dir / "round-1", "ldct"), _truth(rounds_dir / "round-2", "ldct")
    assert two["resolved"] == [2]
    stable, grown, new = two["nodules"]
    assert (stable["change"], stable["prior_index"], stable["growing"]) == ("stable", 0, False)
    assert abs(stable["growth_mm"]) <= 0.4 and stable["follow_up_lung_rads"] == "3"  # a stable 4A becomes 3
    assert (grown["change"], grown["prior_index"], grown["growing"]) == ("grown", 1, True)
    assert grown["growth_mm"] == pytest.approx(4.0, abs=0.01) and grown["follow_up_lung_rads"] == "4B"  # growing, >= 8 mm
    assert new["change"] == "new" and new["prior_index"] is None and new["follow_up_lung_rads"] == "4A"
    # the patient lies elsewhere: each kept nodule moved by the round's translation, not by nothing
    shift = np.array(two["translation_mm"])
    assert np.linalg.norm(shift) > 15
    for now in (stable, grown):
        before = one["nodules"][now["prior_index"]]
        assert np.allclose(np.array(now["center_mm"]) - before["center_mm"], shift, atol=0.01)


def test_ldct_round_two_image_shows_the_nodules_where_the_truth_says(rounds_dir):
    files = sorted((rounds_dir / "round-2" / "ct-0000").glob("*.dcm"))
    slices = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    volume = np.stack([s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices])
    origin = np.array([float(v) for v in slices[0].ImagePositionPatient])
    dz = float(slices[1].ImagePositionPatient[2]) - origin[2]
    dy, dx = (float(v) for v in slices[0].PixelSpacing)
    for nodule in _truth(rounds_dir / "round-2", "ldct")["nodules"]:
        x, y, z = np.array(nodule["center_mm"]) - origin
        k, i, j = int(round(z / dz)), int(round(y / dy)), int(round(x / dx))
        assert volume[k, i - 1:i + 2, j - 1:j + 2].max() > -100, nodule["change"]  # solid tissue, not lung


def test_mammo_interval_cancer_is_new_in_round_two(rounds_dir):
    one, two = _truth(rounds_dir / "round-1", "mammo"), _truth(rounds_dir / "round-2", "mammo")
    new = [les for les in two["lesions"] if les["new_since_prior"]]
    assert len(new) == 1 and new[0]["malignant"] and len(two["lesions"]) == len(one["lesions"]) + 1
    assert two["malignant"]
