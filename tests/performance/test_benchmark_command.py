"""The benchmark command runs end to end and prints every row (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.speed import specs

pytestmark = pytest.mark.slow  # runs the quick benchmark in a subprocess (~50 s on a quiet 2-core machine)

REPO = Path(__file__).resolve().parents[2]


def _table(output: str, header: str) -> list[list[str]]:
    """The cells of the markdown table whose first column is titled ``header``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} "))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_quick_benchmark_prints_every_row_beside_a_baseline_release() -> None:
    # This checkout stands in for the release (run by this interpreter), so the release's
    # worker runs without building a venv; the side-by-side path is the same.
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--baseline-release", str(REPO), "--baseline-python", sys.executable],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=True,
    )
    timed = _table(result.stdout, "row")
    expected = {(spec.name, spec.workload == "small") for spec in specs(cold=True)}
    assert {(spec.name, "small params" in row[0]) for row in timed for spec in specs(cold=True)
            if row[0].startswith(spec.name + ",")} == expected
    assert len(timed) == len(expected)
    for row in timed:
        ours, release, ratio, verdict = row[1], row[2], row[5], row[9]
        assert ours.endswith(")") and release.endswith(")") and ratio.endswith(")"), row
        assert verdict in ("met", "NOT met"), row
    figures = {row[0].split()[0] for row in _table(result.stdout, "figure")}
    assert figures == {"6", "7", "8", "9", "10"}
