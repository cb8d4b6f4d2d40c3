"""Hostile input: every crafted bomb, broken identifier or geometry ends in a RejectedInstance with its
reason before anything large is allocated; hypothesis mutations never escape; memory stays bounded.

The corpus itself is tests/conformance/hostile_corpus.py; the whole of it runs in a subprocess so that
its peak RSS is its own. Figures are recorded in docs/RELIABILITY.md ("Hostile input").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.conformance.hostile_corpus import OK, crafted_cases, outcome

REPO = Path(__file__).resolve().parents[2]
MUTATIONS = 2000  # with the crafted and claim cases, about 2,100 cases in about 10 s on 2 cores
# peak RSS of the corpus process: ~210 MB of interpreter, pydicom, NumPy, hypothesis, bases and crafted
# cases, plus what one case may hold under the corpus limits (an 8 MiB instance, 64 MiB of decoded
# pixels, ~20 MB of elements); measured 244 MB
PEAK_RSS_BOUND_MB = 350
CRAFTED = {case.name: case for case in crafted_cases()}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_case_gets_its_outcome(name):
    case = CRAFTED[name]
    assert outcome(case.data) in case.expected


def test_bombs_are_small_files():
    """The bombs are what a sender can afford: tens of kilobytes that declare gigabytes."""
    assert len(CRAFTED["deflate-bomb-50MB"].data) < 100_000
    for label in ("rle", "jpeg-ls", "jpeg2000", "jpeg-baseline"):
        assert len(CRAFTED[f"{label}-declares-8192x8192x100"].data) < 30_000


def test_whole_corpus_has_no_escape_and_bounded_memory():
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tests.conformance.hostile_corpus", str(MUTATIONS)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"corpus process died ({result.returncode}): {result.stderr[-2000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["escapes"] == [], report["escapes"][:5]
    assert report["unexpected"] == [], report["unexpected"][:5]
    assert report["cases"] >= MUTATIONS + len(CRAFTED)
    assert report["outcomes"].get(OK, 0) > 0 and len(report["outcomes"]) >= 8, report["outcomes"]
    assert report["peak_rss_mb"] < PEAK_RSS_BOUND_MB, report
    assert time.monotonic() - started < 60, report


_GATEWAY_PROBE = textwrap.dedent("""
    import json, os, sys
    from ingest.gateway import Destination, Gateway

    def rss_mb():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def peak_mb():
        # VmHWM, not getrusage: ru_maxrss keeps the parent's RSS at fork across exec
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024

    class Counting(Destination):
        def __init__(self):
            self.sizes = []
        def deliver(self, data, calling_ae):
            self.sizes.append(len(data))

    destination = Counting()
    gateway = Gateway(destination, max_instance_bytes=int(sys.argv[1]))
    port = gateway.start(0)
    before = rss_mb()
    print(json.dumps({"port": port, "rss_mb": before}), flush=True)
    sys.stdin.readline()  # the test sends, then asks for the figures
    print(json.dumps({"rss_mb": rss_mb(), "before_mb": before,
                      "peak_mb": peak_mb(),
                      "delivered": destination.sizes}), flush=True)
    gateway.stop()
""")


def _big_ct(path: Path, side: int) -> int:
    """A CT instance of side×side 16-bit pixels, written to ``path``; returns its size."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = side
    ds.PixelData = bytes(side * side * 2)
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


def _send_to_probe(instance: Path, cap: int, tmpdir: Path):
    """Start the gateway probe with ``cap``, store ``instance``; (status, aborted, figures)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    tmpdir.mkdir()
    probe = subprocess.Popen([sys.executable, "-c", _GATEWAY_PROBE, str(cap)], cwd=REPO,
                             env={**os.environ, "TMPDIR": str(tmpdir)},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = json.loads(probe.stdout.readline())["port"]
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(CTImageStorage)
        association = ae.associate("127.0.0.1", port, ae_title="ONCOSTREAM")
        assert association.is_established
        status = association.send_c_store(instance)  # pynetdicom streams a file path from disk
        # an empty status: the sender's side of the abort may still be settling
        deadline = time.monotonic() + 10
        while "Status" not in status and association.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        aborted = association.is_aborted or not association.is_established
        if not aborted:
            association.release()
        time.sleep(0.5)  # the gateway's side of an abort finishes on its own threads
        probe.stdin.write("report\n")
        probe.stdin.flush()
        figures = json.loads(probe.stdout.readline())
    finally:
        probe.kill()
        probe.wait(timeout=10)
    return status, aborted, figures


@pytest.fixture(scope="module")
def instance_210_mb(tmp_path_factory) -> Path:
    instance = tmp_path_factory.mktemp("big") / "big.dcm"
    assert _big_ct(instance, 10240) > 200_000_000
    return instance


@pytest.mark.parametrize(("cap_mib", "answer"), [(64, "oversize"), (32, "abort")],
                         ids=["64MiB-cap-answered-oversize", "32MiB-cap-aborted-while-arriving"])
def test_gateway_refuses_a_200_mb_instance_without_holding_it(tmp_path, instance_210_mb, cap_mib, answer):
    """Received data sets stream to a temporary file: a 210 MB instance above the cap is answered
    0xC000 oversize, or, past four times the cap, the association is aborted while it arrives and the
    partial file removed; either way the gateway's memory does not grow by anything like its size."""
    size = instance_210_mb.stat().st_size
    status, aborted, figures = _send_to_probe(instance_210_mb, cap_mib * 1024 * 1024, tmp_path / "gateway-tmp")
    if answer == "oversize":
        assert not aborted and status.Status == 0xC000 and status.ErrorComment.startswith("oversize")
    else:
        assert aborted and "Status" not in status, (aborted, status)
    assert figures["delivered"] == []
    assert list((tmp_path / "gateway-tmp").iterdir()) == [], "no partial data set left behind"
    grown = figures["peak_mb"] - figures["before_mb"]
    kept = figures["rss_mb"] - figures["before_mb"]
    print(f"gateway RSS {figures['before_mb']:.0f} MB before, peak {figures['peak_mb']:.0f} MB, "
          f"{figures['rss_mb']:.0f} MB after a {size / 1e6:.0f} MB instance ({answer})")
    assert grown < 32 and kept < 16, figures
