"""The benchmark command runs end to end and prints a row for every figure (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs every benchmark figure in a subprocess (~90 s on 2 cores)

REPO = Path(__file__).resolve().parents[2]


def test_benchmarks_print_every_figure_at_a_tiny_size() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--sizes", "1", "--rounds", "1", "--small-tensors", "20",
         "--scores", "10", "100", "--model-only-size", "2", "--memory-size", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    )
    figures = {line.split("|")[1].strip().split()[0] for line in result.stdout.splitlines()
               if line.startswith("| ") and not line.startswith("| figure")}
    assert figures == {"1", "2", "3", "4", "5", "6", "7", "8", "9"}
    cases = [line.split("|")[2] for line in result.stdout.splitlines() if line.startswith("| ")]
    assert any("busy neighbour" in case for case in cases) and any("20 small params" in case for case in cases)
