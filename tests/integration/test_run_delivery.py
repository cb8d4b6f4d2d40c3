"""`oncostream run` delivers every SR and SEG to a real PACS (Orthanc) by C-STORE and by STOW-RS when
the settings name one; a second run of the same input leaves one instance per SOPInstanceUID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests

from oncostream.synth.command import write_studies

ONCOSTREAM = str(Path(sys.executable).parent / "oncostream")


def _run(inp: Path, out: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([ONCOSTREAM, "run", str(inp), "--out", str(out)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (out / "rejected.jsonl").exists(), (out / "rejected.jsonl").read_text()


def test_run_delivers_results_to_pacs_by_cstore_and_stow(tmp_path, orthanc_empty):
    inp = tmp_path / "input"
    write_studies(inp, mammo=1, ldct=1, seed=11, size="small")
    http = orthanc_empty.env["ORTHANC_HTTP"]
    env = {"ONCOSTREAM_PACS_ADDRESS": orthanc_empty.env["ORTHANC_DICOM"],
           "ONCOSTREAM_PACS_CALLED_AE": orthanc_empty.extra["ae_title"],
           "ONCOSTREAM_STOW_RS_URL": orthanc_empty.extra["dicomweb_root"]}
    _run(inp, tmp_path / "out1", env)
    events = [json.loads(line) for line in (tmp_path / "out1" / "triage.jsonl").read_text().splitlines()]
    expected = {e["sr_sop_instance_uid"] for e in events} | {u for e in events for u in e["seg_sop_instance_uids"]}
    expected |= {p.stem for p in (tmp_path / "out1" / "secondary").glob("*.dcm")}
    assert len(events) == 2 and all(e["sr_sop_instance_uid"] for e in events)

    def stored() -> list[str]:
        ids = requests.get(f"{http}/instances", timeout=10).json()
        return [requests.get(f"{http}/instances/{i}/simplified-tags", timeout=10).json()["SOPInstanceUID"]
                for i in ids]

    assert sorted(stored()) == sorted(expected)
    _run(inp, tmp_path / "out2", env)  # a replay: same UIDs, so the PACS still holds one copy of each
    assert sorted(stored()) == sorted(expected)
