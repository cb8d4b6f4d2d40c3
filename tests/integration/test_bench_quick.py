"""`make bench QUICK=1` still runs: the quick variant of the benchmarks writes every figure it promises.

Only that the figures exist is checked, never their values: performance is measured under perf/, not here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_benchmarks_write_their_figures(tmp_path):
    results = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, "-m", "perf.run_all", "--quick", "--results", str(results)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = results.read_text()
    for path in ("naive script (", "naive script, the same model work", "model-only ceiling", "embedded `oncostream run`"):
        [row] = [line for line in text.splitlines() if line.startswith(f"| {path}")]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 12 and float(cells[5]) > 0, row  # studies/s
    for ratio in ("pipeline efficiency", "speedup over the naive script", "speedup over the naive script, the same model work"):
        assert re.search(rf"^\| {ratio} \| .* \| \d+\.\d\d \|", text, re.M), ratio
    assert re.search(r"with every core per run, one run at a time; \d+\.\d\d s with one thread per run", text)
    assert "Measured: " in text and "Load average" in text
    assert "GPU projection" in text and "not a measurement" in text
