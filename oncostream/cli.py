"""`oncostream` command line (DESIGN.md, command surface). Handlers are imported lazily so that
`oncostream synth` does not pay for ONNX Runtime, DALI or Kafka imports."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

# command -> "module:function"; each handler takes the parsed argparse.Namespace and returns an exit code
_HANDLERS = {
    "synth": "oncostream.synth.command:main",
    "run": "oncostream.app.run:main_run",
    "produce": "oncostream.streaming:main_produce",
    "worker": "oncostream.app.worker:main_worker",
    "gateway": "oncostream.app.gateway:main",
    "models": "oncostream.model_build:main",
    "eval": "oncostream.evaluation:main",
    "health": "oncostream.app.health:main_health",
    "worklist": "oncostream.app.worklist:main_worklist",
}


def _seed_range(text: str) -> range:
    start, _, stop = text.partition(":")
    if not stop:
        raise argparse.ArgumentTypeError(f"a seed range is A:B, got {text!r}")
    return range(int(start), int(stop))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oncostream", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write synthetic mammography exams and LDCT series with ground truth")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mammo", type=int, default=3)
    p.add_argument("--ldct", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["small", "full"], default="full")
    p.add_argument("--rounds", type=int, default=None, metavar="R",
                   help="R screening rounds of the same patients, 12-24 months apart, under OUT/round-N/")

    p = sub.add_parser("run", help="run the pipeline on a directory of DICOM (embedded by default)")
    p.add_argument("path", nargs="?", type=Path, help="DICOM directory; omitted: synthesise a demo set")
    p.add_argument("--out", type=Path, default=Path("oncostream-out"))
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--triton", metavar="HOST:PORT", default=None, help="use Triton (gRPC) instead of embedded")
    p.add_argument("--size", choices=["small", "full"], default="full", help="size of the synthesised demo set")

    p = sub.add_parser("produce", help="produce DICOM instances to Kafka")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("path", nargs="?", type=Path)
    src.add_argument("--synth", type=int, metavar="N", help="synthesise N studies and produce them")
    p.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    p.add_argument("--topic", default=None)
    p.add_argument("--program", default="default")
    p.add_argument("--size", choices=["small", "full"], default="small")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("worker", help="consume DICOM from Kafka, publish triage events and results")
    p.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    p.add_argument("--topic", default=None)
    p.add_argument("--triton", metavar="HOST:PORT", default=None)
    p.add_argument("--max-studies", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--health-file", type=Path, default=None,
                   help="rewrite this file every time the loop goes round (read by `oncostream health`)")

    p = sub.add_parser("health", help="exit 0 when a worker's loop beat recently (liveness probe)")
    p.add_argument("--file", type=Path, required=True, help="the worker's --health-file")
    p.add_argument("--max-age", type=float, default=300.0, metavar="S", help="seconds (default 300)")

    p = sub.add_parser("gateway", help="DICOM C-STORE SCP that feeds Kafka or the embedded pipeline")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ae-title", default="ONCOSTREAM")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--bootstrap", metavar="HOST:PORT")
    dest.add_argument("--out", type=Path)
    p.add_argument("--allow", action="append", default=None, metavar="AE", help="allowed calling AE titles")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: loopback only; 0.0.0.0 for every interface)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on this port (0: a free one)")

    p = sub.add_parser("worklist", help="serve the worklist page over the results store (rows as JSON at /api/studies)")
    p.add_argument("--port", type=int, required=True, help="0: a free port (printed)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")

    p = sub.add_parser("models", help="model repository tools")
    msub = p.add_subparsers(dest="models_command", required=True)
    b = msub.add_parser("build", help="write a ready Triton repository")
    b.add_argument("--target", choices=["cpu", "tensorrt"], required=True)
    b.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("eval", help="evaluate the committed models on fresh phantoms")
    p.add_argument("--seeds", type=_seed_range, default=None, metavar="A:B")
    p.add_argument("--pooled-seeds", type=_seed_range, default=None, metavar="A:B",
                   help="pooled nodule-calibration phantoms (default: 200 from 2,000,000 unless --seeds is given)")
    p.add_argument("--json", type=Path, default=None, dest="json_path", metavar="FILE")
    p.add_argument("--size", choices=["small", "full"], default="full")
    p.add_argument("--profile", default="default", metavar="NAME[,NAME...]|all",
                   help="re-express the studies as another vendor would write them (oncostream/synth/vendors.py "
                        "MAMMO_PROFILES, CT_PROFILES); several in one run, comma-separated, or all; each "
                        "profile's JSON keys gain the suffix _<NAME> (the default's none)")
    p.add_argument("--modality", choices=["both", "ct", "mg"], default="both",
                   help="evaluate only one modality's models (e.g. after retraining only those)")
    p.add_argument("--rounds", type=int, default=None, metavar="2",
                   help="evaluate follow-up instead: two screening rounds per patient (seed), the second compared "
                        "with the first (default 30 patients from 3,000,000)")
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None and os.path.basename(sys.argv[0]) == "oncostream":  # the command, not a caller in this process
        # once, with glibc's huge-page tunable set (oncostream/memory.py): glibc reads it only at start
        from oncostream.memory import restart_with_hugepages

        restart_with_hugepages(sys.argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # libraries that narrate every step at INFO
        for noisy in ("highdicom", "pynetdicom", "kafka", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    module_name, _, func_name = _HANDLERS[args.command].partition(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
