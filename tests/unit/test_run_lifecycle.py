"""`oncostream run` through the study lifecycle with the real embedded models on small synthetic studies:
a broken CT series is rejected whole while the good exam is triaged, and a view resent after its exam was
published changes nothing (the SR under its UID and triage.jsonl keep the one result)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pydicom
import pytest

from oncostream.app.run import main_run


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, list[Path]]:
    from oncostream.synth.command import write_studies

    root = tmp_path_factory.mktemp("run-studies")
    folders = write_studies(root, mammo=1, ldct=1, seed=11, size="small")
    return {f.name[:2]: sorted(f.glob("*.dcm")) for f in folders}


def run(inp: Path, out: Path) -> int:
    return main_run(argparse.Namespace(path=inp, out=out, metrics_port=None, triton=None, size="small"))


def test_a_ct_series_without_geometry_is_rejected_whole_and_the_exam_is_still_triaged(tmp_path, studies):
    inp = tmp_path / "in"
    (inp / "a-exam").mkdir(parents=True)
    (inp / "b-ct").mkdir()
    for path in studies["mg"]:
        shutil.copy(path, inp / "a-exam" / path.name)
    broken = []
    for path in studies["ct"][:2]:
        ds = pydicom.dcmread(path)
        del ds.ImageOrientationPatient
        broken.append(inp / "b-ct" / path.name)
        ds.save_as(broken[-1])
    assert run(inp, tmp_path / "out") == 0
    events = [json.loads(line) for line in (tmp_path / "out" / "triage.jsonl").read_text().splitlines()]
    assert [e["modality"] for e in events] == ["MG"]
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["origin"] for r in rejected) == sorted(str(p) for p in broken), "every instance, by file"
    assert all("ImageOrientationPatient" in r["detail"] for r in rejected)


def test_a_view_resent_after_its_exam_was_published_changes_nothing(tmp_path, studies):
    inp = tmp_path / "in"
    (inp / "a-exam").mkdir(parents=True)
    (inp / "b-resent").mkdir()
    for path in studies["mg"]:
        shutil.copy(path, inp / "a-exam" / path.name)
    shutil.copy(studies["mg"][0], inp / "b-resent" / studies["mg"][0].name)
    out = tmp_path / "out"
    assert run(inp, out) == 0
    (line,) = (out / "triage.jsonl").read_text().splitlines()
    event = json.loads(line)
    assert not event["incomplete"]
    sr = pydicom.dcmread(out / "sr" / f"{event['sr_sop_instance_uid']}.dcm")
    referenced = {str(item.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert len(referenced) == 4, "the SR under this UID must stay the one of the whole exam"


def test_run_refuses_to_start_when_its_rejection_log_cannot_be_written(tmp_path, studies):
    out = tmp_path / "out"
    (out / "rejected.jsonl").mkdir(parents=True)
    assert run(studies["mg"][0].parent, out) == 2
    assert not (out / "triage.jsonl").exists(), "nothing may be processed that could not be dead-lettered"


def test_a_dose_report_in_the_folder_is_ignored_not_rejected(tmp_path, studies):
    from pydicom.uid import generate_uid

    inp = tmp_path / "in"
    (inp / "a-exam").mkdir(parents=True)
    for path in studies["mg"]:
        shutil.copy(path, inp / "a-exam" / path.name)
    dose = pydicom.dcmread(studies["mg"][0])
    dose.SOPClassUID = dose.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    dose.SOPInstanceUID = dose.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["dose"])
    dose.save_as(inp / "a-exam" / "zz-dose.dcm")
    out = tmp_path / "out"
    assert run(inp, out) == 0
    assert len((out / "triage.jsonl").read_text().splitlines()) == 1
    assert not (out / "rejected.jsonl").exists()


def test_studies_processed_at_once_give_the_same_outputs_as_one_at_a_time(tmp_path, studies, monkeypatch):
    inp = tmp_path / "in"
    for kind in ("mg", "ct"):
        (inp / kind).mkdir(parents=True)
        for path in studies[kind]:
            shutil.copy(path, inp / kind / path.name)
    outputs = []
    for processing in ("1", "3"):
        monkeypatch.setenv("ONCOSTREAM_MAX_STUDIES_PROCESSING", processing)
        out = tmp_path / f"out-{processing}"
        assert run(inp, out) == 0
        events = sorted((json.loads(line) for line in (out / "triage.jsonl").read_text().splitlines()),
                        key=lambda e: e["study_instance_uid"])
        timeless = [{k: v for k, v in e.items() if k not in ("arrived_at", "triaged_at")} for e in events]
        srs = {p.name: p.read_bytes() for p in sorted((out / "sr").iterdir())}
        outputs.append((timeless, srs))
    assert len(outputs[0][0]) == 2
    assert outputs[0] == outputs[1], "the same events and byte-identical SRs whatever the concurrency"


def test_a_fault_of_this_process_stops_the_run_without_blaming_the_instance(tmp_path, studies, monkeypatch):
    """An instance this process could not read for a reason of its own (an import failing, memory) is
    not dead-lettered: the run stops with exit 1, and running it again reads the instance."""
    from ingest import decode

    inp = tmp_path / "in"
    inp.mkdir()
    for path in studies["mg"]:
        shutil.copy(path, inp / path.name)
    checks = decode._check_required
    calls = []

    def import_fails_once(ds, uid):
        calls.append(uid)
        if len(calls) == 2:
            raise ImportError("cannot import name 'codes' (most likely due to a circular import)")
        return checks(ds, uid)

    monkeypatch.setattr(decode, "_check_required", import_fails_once)
    out = tmp_path / "out"
    assert run(inp, out) == 1
    assert not (out / "rejected.jsonl").exists(), "a process fault is not the instance's"
    assert not (out / "triage.jsonl").exists() or not (out / "triage.jsonl").read_text().strip()
    assert run(inp, out) == 0
    (line,) = (out / "triage.jsonl").read_text().splitlines()
    assert not json.loads(line)["incomplete"]
