"""The README's Python API example runs as written, and again (it makes a fresh store)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def python_api_example() -> str:
    section = README.read_text().split("\n## Python API\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]


def test_the_python_api_example_runs_twice(capsys) -> None:
    example = python_api_example()
    for _ in range(2):
        exec(compile(example, str(README), "exec"), {})
        assert capsys.readouterr().out.splitlines()[:3] == ["3000", "[1000, 2000, 3000]", "3000"]
