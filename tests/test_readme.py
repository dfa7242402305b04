"""The README (the front door) and the docs say what is true: their Python examples run, the README
lists every command, runs the test command CI runs, and links only to pages that exist; the docs
site's navigation holds every page."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import yaml

from dacapo_store.cli import main

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SECTIONS = [
    "## Set up, try, test",
    "## Python",
    "## DaCapo: one line",
    "## Dashboard",
    "## The command line at a glance",
    "## A lab on MongoDB in five steps",
    "## Documentation",
]


def section(text: str, heading: str) -> str:
    """The text under ``heading``, up to the next heading of its level."""
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def first_python_block(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, re.DOTALL)[1]


def test_the_readme_is_a_front_door_of_a_few_hundred_lines_with_its_sections_in_order() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    positions = [text.index(f"\n{heading}\n") for heading in SECTIONS]
    assert positions == sorted(positions)


def test_the_readme_python_example_has_at_most_15_lines_and_runs_twice(capsys) -> None:
    example = first_python_block(section(README.read_text(), "## Python"))
    assert len(example.splitlines()) <= 15
    for _ in range(2):  # it makes a fresh store each time
        exec(compile(example, str(README), "exec"), {})
        assert capsys.readouterr().out.splitlines() == ["3000", "3000"]


def test_the_getting_started_python_example_runs_twice(capsys) -> None:
    page = DOCS / "getting-started.md"
    example = first_python_block(section(page.read_text(), "## A first Python example"))
    for _ in range(2):
        exec(compile(example, str(page), "exec"), {})
        assert capsys.readouterr().out.splitlines()[:3] == ["3000", "[1000, 2000, 3000]", "3000"]


def test_the_readme_lists_every_command_once_with_a_line_of_its_own() -> None:
    table = section(README.read_text(), "## The command line at a glance")
    listed = re.findall(r"^\| `dacapo-store ([a-z-]+)[^`]*` \|", table, re.MULTILINE)
    assert sorted(listed) == sorted(main.commands)


def test_the_readme_test_commands_are_those_ci_runs() -> None:
    setup = section(README.read_text(), "## Set up, try, test")
    [fast] = re.findall(r"^(python -m pytest[^#\n]*?)\s*(?:#.*)?$", setup, re.MULTILINE)
    assert fast == 'python -m pytest -q -m "not slow"'
    assert "`python -m pytest -q -m slow`" in setup
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"\n{fast}\n" in ci and "\npython -m pytest -q -m slow\n" in ci
    for needed in ("DACAPO_STORE_TEST_MONGODB_URI", ".ci/start-mongodb", ".github/workflows/mongodb.yml", "GPU"):
        assert needed in setup


def test_the_slow_marker_is_registered() -> None:
    markers = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^\s*"slow: ', markers, re.MULTILINE)


def test_the_readme_shows_each_dashboard_page_and_links_only_to_files_that_exist() -> None:
    text = README.read_text()
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) == ["docs/ui-runs.png", "docs/ui-run.png", "docs/ui-compare.png"]
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), target


def test_the_docs_site_has_every_page_in_its_navigation_and_ci_builds_it_strictly() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["strict"] is True
    navigated = {next(iter(entry.values())) for entry in config["nav"]}
    pages = {path.name for path in DOCS.glob("*.md")}
    assert navigated == pages
    ci = (ROOT / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in ci and "python docs/check_examples.py\n" in ci


def test_every_console_block_of_the_docs_is_one_that_check_examples_runs() -> None:
    """docs/check_examples.py runs the `console` blocks of its PAGES: no such block elsewhere,
    and each is a dacapo-store session."""
    [checked] = re.findall(r"^PAGES = (\[.*\])$", (DOCS / "check_examples.py").read_text(), re.MULTILINE)
    with_blocks = set()
    for page in DOCS.glob("*.md"):
        for block in re.findall(r"^```console\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE):
            with_blocks.add(page.name)
            commands = [line for line in block.splitlines() if line.startswith("$ ")]
            assert commands and block.startswith("$ dacapo-store "), page.name
            assert all(shlex.split(line[2:])[0] == "dacapo-store" for line in commands), page.name
    assert with_blocks == set(ast.literal_eval(checked))


def test_every_python_session_of_the_docs_is_one_that_check_examples_runs() -> None:
    [checked] = re.findall(r"^PYTHON_PAGES = (\[.*\])$", (DOCS / "check_examples.py").read_text(), re.MULTILINE)
    with_sessions = {page.name for page in DOCS.glob("*.md") if "\n```pycon\n" in page.read_text()}
    assert with_sessions == set(ast.literal_eval(checked))
