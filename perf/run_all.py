"""`make bench`: run every perf/bench_*.py (each writes its own section of perf/RESULTS.md)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main() -> int:
    failures = []
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        name = f"perf.{path.stem}"
        print(f"== {name}", flush=True)
        try:
            importlib.import_module(name).main([])
        except Exception as exc:  # noqa: BLE001 - report every failing benchmark, not just the first
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    for failure in failures:
        print("FAILED", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
