"""The validation helpers other tests rely on must be able to say no."""

from __future__ import annotations

from pathlib import Path

from tests.dicom_tools import dciodvfy_errors, dsrdump_ok
from tests.unit import screening_cases as cases


def test_dciodvfy_reports_a_missing_mandatory_attribute(tmp_path: Path) -> None:
    ds = cases.ldct_study().datasets[0]
    good = tmp_path / "good.dcm"
    ds.save_as(good, enforce_file_format=True)
    del ds.ImagePositionPatient  # Type 1 in the Image Plane module
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad, enforce_file_format=True)
    assert dciodvfy_errors(good) == []
    assert any("ImagePositionPatient" in e for e in dciodvfy_errors(bad))


def test_dciodvfy_reports_non_dicom_bytes(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"not a dicom file")
    assert dciodvfy_errors(path) != []


def test_dsrdump_ok_is_false_for_an_image(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    cases.ldct_study().datasets[0].save_as(path, enforce_file_format=True)
    assert not dsrdump_ok(path)
