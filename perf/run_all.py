"""`make bench`: run every perf/bench_*.py (each writes its own section of perf/RESULTS.md).

`make bench QUICK=1` (``--quick``) runs only the benchmarks that have a quick variant (``QUICK = True`` in the
module), in under a minute, writing to ``.cache/bench-quick/RESULTS.md`` (or ``--results FILE``) so that the
committed figures in perf/RESULTS.md are never replaced by quick ones.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

QUICK_RESULTS = Path(__file__).resolve().parent.parent / ".cache" / "bench-quick" / "RESULTS.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perf.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    failures = []
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        name = f"perf.{path.stem}"
        module = importlib.import_module(name)
        if args.quick and not getattr(module, "QUICK", False):
            continue
        bench_args = []
        if args.quick:
            results = args.results or QUICK_RESULTS
            results.parent.mkdir(parents=True, exist_ok=True)
            bench_args = ["--quick", "--results", str(results)]
        elif args.results is not None and getattr(module, "QUICK", False):
            bench_args = ["--results", str(args.results)]
        print(f"== {name} {' '.join(bench_args)}", flush=True)
        try:
            module.main(bench_args)
        except Exception as exc:  # noqa: BLE001 - report every failing benchmark, not just the first
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    for failure in failures:
        print("FAILED", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    from oncostream.memory import restart_with_hugepages

    # as the `oncostream` command runs (oncostream/memory.py), so that in-process measurements compare alike
    restart_with_hugepages(["-m", "perf.run_all", *sys.argv[1:]])
    sys.exit(main(sys.argv[1:]))
