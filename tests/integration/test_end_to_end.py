"""End to end through the real CLI: synth -> `oncostream run` (embedded backend) -> triage.jsonl, SR, SEG.

Broken instances are mixed into the same input directory: each is rejected with its reason, and every
valid study of the same run still gets its SR and triage record.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from oncostream.contracts import TriageEvent
from tests.dicom_tools import dciodvfy_errors

ONCOSTREAM = str(Path(sys.executable).parent / "oncostream")
MAX_BYTES = 2_000_000  # small enough that the padded instance below is oversize, large enough for small studies
EXPECTED_REJECTIONS = {"truncated", "not_dicom", "missing_pixel_data", "short_pixel_data",
                       "unknown_sop_class", "missing_attribute", "oversize"}


def _oversize_instance(valid_ct_bytes: bytes) -> bytes:
    import io

    ds = pydicom.dcmread(io.BytesIO(valid_ct_bytes))
    block = ds.private_block(0x0011, "ONCOSTREAM TEST", create=True)
    block.add_new(0x01, "OB", bytes(MAX_BYTES + 1000))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, synth_dir, broken_dir, valid_ct_bytes):
    root = tmp_path_factory.mktemp("e2e")
    inp, out = root / "input", root / "out"
    shutil.copytree(synth_dir, inp)
    shutil.copytree(broken_dir, inp / "broken")
    (inp / "broken" / "oversize.dcm").write_bytes(_oversize_instance(valid_ct_bytes))
    env = dict(os.environ, ONCOSTREAM_MAX_INSTANCE_BYTES=str(MAX_BYTES))
    proc = subprocess.run([ONCOSTREAM, "run", str(inp), "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return inp, out, proc.stdout + proc.stderr


def _study_files(inp: Path) -> dict[str, set[str]]:
    """StudyInstanceUID -> SOPInstanceUIDs of the valid synthetic instances (truth files name the studies)."""
    studies: dict[str, set[str]] = {}
    for truth_path in (inp / "ground_truth").glob("*.json"):
        studies[json.loads(truth_path.read_text())["study_instance_uid"]] = set()
    for path in inp.rglob("*.dcm"):
        if "broken" in path.parts:
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        studies[str(ds.StudyInstanceUID)].add(str(ds.SOPInstanceUID))
    return studies


def _events(out: Path) -> list[TriageEvent]:
    return [TriageEvent.model_validate_json(line) for line in (out / "triage.jsonl").read_text().splitlines()]


def test_exactly_one_triage_record_and_one_sr_per_study(e2e):
    inp, out, _ = e2e
    studies = _study_files(inp)
    events = _events(out)
    assert sorted(e.study_instance_uid for e in events) == sorted(studies)
    srs = sorted(out.glob("sr/*.dcm"))
    assert len(srs) == len(studies)
    assert {e.sr_sop_instance_uid for e in events} == {p.stem for p in srs}
    assert {e.modality for e in events} == {"MG", "CT"}


def test_each_sr_references_exactly_its_study_instances(e2e):
    inp, out, _ = e2e
    studies = _study_files(inp)
    for path in out.glob("sr/*.dcm"):
        sr = pydicom.dcmread(path)
        referenced = {str(item.ReferencedSOPInstanceUID)
                      for study in sr.CurrentRequestedProcedureEvidenceSequence
                      for series in study.ReferencedSeriesSequence
                      for item in series.ReferencedSOPSequence}
        assert referenced == studies[str(sr.StudyInstanceUID)], path.name


@pytest.mark.parametrize("kind", ["sr", "seg"])
def test_every_output_passes_dciodvfy(e2e, kind):
    _, out, _ = e2e
    paths = sorted(out.glob(f"{kind}/*.dcm"))
    if kind == "sr":
        assert paths
    for path in paths:
        assert dciodvfy_errors(path) == [], path.name


def test_bad_inputs_are_rejected_with_their_reason_and_nothing_else_is(e2e):
    _, out, _ = e2e
    lines = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert sorted(line["reason"] for line in lines) == sorted(EXPECTED_REJECTIONS)
    assert all(line["detail"] for line in lines)
    by_reason = {line["reason"]: line for line in lines}
    assert Path(by_reason["oversize"]["origin"]).name == "oversize.dcm"


def test_worklist_table_is_printed(e2e):
    _, out, stdout = e2e
    assert "oncostream worklist" in stdout
    for event in _events(out):
        assert event.study_instance_uid[-12:] in stdout


def test_no_patient_identifiers_in_logs_or_console(e2e):
    inp, out, output = e2e
    identifiers = set()
    for path in inp.rglob("*.dcm"):
        if "broken" in path.parts:
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        identifiers |= {str(ds.PatientName), str(ds.PatientID), str(ds.get("PatientBirthDate", ""))}
    identifiers.discard("")
    assert identifiers, "the synthetic studies carry (synthetic) patient identifiers to look for"
    leaked = {i for i in identifiers if i in output}
    assert not leaked, f"patient identifiers printed: {sorted(leaked)}"
    events = (out / "triage.jsonl").read_text()
    assert not {i for i in identifiers if i in events}, "TriageEvents carry patient identifiers by default"
