"""perf/RESULTS.md is written by the benchmarks themselves: each owns one section, replaced on rerun,
headed with the command that reproduces it and the machine it ran on."""

from __future__ import annotations

import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_HEADER = "# oncostream benchmarks\n\nEach section is written by the benchmark it names; rerun the command to refresh it.\n"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}, no GPU"


def write_section(name: str, command: str, body: str, path: Path | None = None, *, measured_on: str | None = None,
                  measured_at: str | None = None) -> Path:
    """Replace (or append) the section `name` of perf/RESULTS.md (or of ``path``). ``measured_on`` and
    ``measured_at``: the machine and time of a measurement made elsewhere (default: this one, now)."""
    results = RESULTS if path is None else Path(path)
    text = results.read_text() if results.exists() else _HEADER
    stamp = measured_at or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"<!-- begin {name} -->\n## {name}\n\nCommand: `{command}`  \nMachine: {measured_on or machine()}  \n"
               f"Measured: {stamp}\n\n{body.strip()}\n<!-- end {name} -->\n")
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    results.write_text(text)
    return results
