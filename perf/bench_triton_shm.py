"""Triton: system shared memory vs plain gRPC for one LDCT series through `ldct_screening`.

For each series size and transport (TritonBackend with `triton_shared_memory` system / none), after
one warm-up call it times `repeats` calls and reports:
- client wall time per series (mean; the server's statistics give a mean too),
- server time per request (Triton's own statistics for the ensemble: receipt to response),
- transport overhead = client - server (serialisation, copies, gRPC),
- tensor bytes carried inside gRPC messages (request + response) and bytes passed through shared
  memory (inputs, and the LDCT outputs, whose size the candidate cap bounds).

Writes its section of perf/RESULTS.md. Starts its own Triton on the CPU repository unless --triton.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SECTION = "Triton: system shared memory vs plain gRPC (LDCT series)"


def _server_ns(client, model: str, expected_count: int | None = None, timeout_s: float = 10.0) -> tuple[int, int]:
    """(requests, total ns) of `model` in Triton's statistics; with `expected_count`, waits (bounded)
    until the server has recorded that many, since statistics land just after the response."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
        success = stats[0]["inference_stats"]["success"]
        count, ns = int(success.get("count", 0)), int(success.get("ns", 0))
        if expected_count is None or count >= expected_count or time.monotonic() > deadline:
            return count, ns
        time.sleep(0.05)


def measure(url: str, volume: np.ndarray, spacing: np.ndarray, mode: str, repeats: int) -> dict:
    import tritonclient.grpc as grpcclient

    from ingest.backends.triton import LDCT_ENSEMBLE, SHARED_MEMORY_MIN_BYTES, TritonBackend
    from oncostream.settings import Settings

    backend = TritonBackend(Settings(triton_url=url, triton_shared_memory=mode))
    client = grpcclient.InferenceServerClient(url)
    try:
        before, _ = _server_ns(client, LDCT_ENSEMBLE)
        raw = backend.infer_ldct(volume, spacing)  # warm-up (and the regions' creation)
        count0, ns0 = _server_ns(client, LDCT_ENSEMBLE, before + 1)
        walls = []
        for _ in range(repeats):
            started = time.perf_counter()
            raw = backend.infer_ldct(volume, spacing)
            walls.append(time.perf_counter() - started)
        count1, ns1 = _server_ns(client, LDCT_ENSEMBLE, count0 + repeats)
    finally:
        backend.close()
        client.close()
    input_bytes = volume.nbytes + spacing.nbytes
    # the tensors only (LdctRaw also carries the operating point, a float)
    output_bytes = sum(v.nbytes for v in vars(raw).values() if isinstance(v, np.ndarray))
    shared_in = backend.uses_shared_memory and input_bytes >= SHARED_MEMORY_MIN_BYTES
    shared_out = backend.uses_shared_memory  # LDCT outputs are bounded by the candidate cap (>= 1 MiB)
    server_s = (ns1 - ns0) / max(1, count1 - count0) / 1e9
    wall_s = statistics.fmean(walls)
    return {"mode": mode, "wall_s": wall_s, "server_s": server_s, "overhead_s": wall_s - server_s,
            "grpc_bytes": (0 if shared_in else input_bytes) + (0 if shared_out else output_bytes),
            "shm_bytes": (input_bytes if shared_in else 0) + (output_bytes if shared_out else 0), "candidates": int(raw.candidates.shape[0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,full", help="comma-separated phantom sizes (small, full)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1_000_500)
    parser.add_argument("--triton", metavar="HOST:PORT", default=None, help="use a running server (same host)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave perf/RESULTS.md alone")
    args = parser.parse_args(argv)

    from oncostream.synth.ldct import make_ldct_phantom

    service = None
    url = args.triton
    if url is None:
        from oncostream.services import triton

        service = triton.start(Path(tempfile.mkdtemp(prefix="oncostream-bench-triton-")))
        url = service.env["TRITON_GRPC"]
    rows = []
    try:
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            phantom = make_ldct_phantom(args.seed, size=size)
            volume = np.ascontiguousarray(phantom.hu_low, np.float32)
            spacing = np.asarray(phantom.spacing_mm, np.float32)
            for mode in ("none", "system"):
                result = measure(url, volume, spacing, mode, args.repeats)
                result.update(size=size, shape="x".join(map(str, volume.shape)))
                rows.append(result)
                print(result, flush=True)
    finally:
        if service is not None:
            service.stop()

    lines = ["| series | transport | client s/series (mean) | server s/request | transport overhead s "
             "| MB in gRPC messages | MB via shared memory |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        transport = "system shared memory" if r["mode"] == "system" else "plain gRPC"
        lines.append(f"| {r['size']} {r['shape']} | {transport} | {r['wall_s']:.3f} | {r['server_s']:.3f} | "
                     f"{r['overhead_s']:.3f} | {r['grpc_bytes'] / 1e6:.1f} | {r['shm_bytes'] / 1e6:.1f} |")
    body = "\n".join(lines) + (
        f"\n\n{args.repeats} timed calls per row after one warm-up; CPU repository (python-backend steps, "
        "ONNX Runtime) in the pytriton wheel's tritonserver on the same host. With shared memory the HU "
        "volume and the outputs (masks, candidates, probabilities) pass through two registered regions and "
        "the gRPC messages carry only tensor metadata; the MB columns count tensor bytes. "
        "Overhead = client wall time - Triton's own per-request time for the ensemble. Server time "
        "moves by a second or more between runs with the load of the shared 2-core host, so compare the "
        "overhead column: it is what the transport costs.")
    print(body)
    if not args.no_write:
        from perf.results import write_section

        command = "python -m perf.bench_triton_shm" + (f" {' '.join(argv)}" if argv else "")
        print(f"wrote {write_section(SECTION, command, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
