"""The command line as a separate process, where a traceback would show: every failure is one
``error:`` line on stderr with status 1, a closed standard output ends it quietly with status
141, and hostile files given to ``import`` are refused without being read."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dacapo_store import LocalStatsStore
from dacapo_store.cli import BROKEN_PIPE_EXIT_CODE, main
from dacapo_store.local.catalog import CATALOG_FILENAME
from dacapo_store.testing.state_values import torch_archive

CLI = [sys.executable, "-c", "from dacapo_store.cli import main; main()"]


def run_cli(*args: str, cwd: Path, stdout: int | None = subprocess.PIPE, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "DACAPO_STORE_URI"}
    environment["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [*CLI, *args], cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout, env=environment
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a failed command (status 1; nothing else on stderr but
    the ``store:`` line that listings print first)."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("store: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.slow  # runs the CLI in a fresh interpreter per case
@pytest.mark.parametrize("damage", ["garbage bytes", "a directory"])
@pytest.mark.parametrize("command", [["runs"], ["du"], ["demo", "--iterations", "2"]])
def test_an_unusable_catalog_is_one_error_line(tmp_path: Path, damage: str, command: list[str]) -> None:
    store = tmp_path / "store"
    store.mkdir()
    catalog = store / CATALOG_FILENAME
    if damage == "a directory":
        catalog.mkdir()
    else:
        catalog.write_bytes(os.urandom(8192))
    line = one_error_line(run_cli(*command, "--store", str(store), cwd=tmp_path))
    assert str(catalog) in line
    assert ("is a directory" if damage == "a directory" else "is not an SQLite database") in line


@pytest.mark.parametrize("command", [["demo", "--iterations", "2"], ["runs"]])
def test_a_closed_standard_output_ends_quietly(tmp_path: Path, command: list[str]) -> None:
    LocalStatsStore(tmp_path / "store").delete_validation_scores("nobody")  # a write creates a store to read
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line, as after `| head -0`
    try:
        result = run_cli(*command, "--store", str(tmp_path / "store"), cwd=tmp_path, stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == BROKEN_PIPE_EXIT_CODE == 141
    assert all(line.startswith("store: ") for line in result.stderr.splitlines()), result.stderr  # no error


@pytest.mark.slow  # runs the CLI in a fresh interpreter per case
def test_head_gets_its_line_and_the_command_stops_quietly(tmp_path: Path) -> None:
    pipeline = f"{' '.join(map(repr, CLI))} demo --iterations 2 --store store | head -1; echo \"${{PIPESTATUS[0]}}\" >&2"
    result = subprocess.run(["bash", "-c", pipeline], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.stdout.startswith("Run 'demo-2' in store store")
    assert result.stderr.strip().splitlines()[-1] in ("0", "141")  # 0 if it all fit in the pipe first
    assert "Broken pipe" not in result.stderr and "Traceback" not in result.stderr


def hostile_file(tmp_path: Path, kind: str) -> str:
    """A path ``import`` must refuse, and what the refusal says."""
    if kind == "/dev/zero":
        return "/dev/zero"
    path = tmp_path / kind.replace(" ", "_")
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a zip bomb":
        path.write_bytes(torch_archive({"w": torch.zeros(20_000_000, dtype=torch.uint8)}, deflated=True))
        assert path.stat().st_size < 100_000  # expands 200-fold
    elif kind == "a truncated archive":
        data = torch_archive({"w": torch.ones(100)})
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "a list inside":
        path.write_bytes(torch_archive([torch.ones(2)]))
    return str(path)


REFUSALS = {
    "/dev/zero": "is a character device: only a regular file can be read",
    "a FIFO": "is a FIFO (named pipe): only a regular file can be read",
    "a zip bomb": "are compressed",
    "a truncated archive": "is not a valid zip archive",
    "garbage": "is not a valid zip archive",
    "a list inside": "holds a list, not a state dict",
}


@pytest.mark.slow  # runs the CLI in a fresh interpreter per case
@pytest.mark.parametrize("kind", list(REFUSALS))
def test_import_refuses_hostile_files_without_reading_them(tmp_path: Path, kind: str) -> None:
    path = hostile_file(tmp_path, kind)
    result = run_cli("import", path, "victim", "1", "--store", str(tmp_path / "store"), cwd=tmp_path, timeout=120)
    assert REFUSALS[kind] in one_error_line(result)


def test_a_read_only_store_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated (tests may run as root, whom permissions do not stop): SQLite opened read-only,
    then payload writes failing with EROFS."""
    store = tmp_path / "store"
    runner = CliRunner()
    LocalStatsStore(store).delete_validation_scores("nobody")  # a write creates the store
    exported = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, exported)
    connect = sqlite3.connect

    def read_only_connect(path, *args, **kwargs):
        return connect(f"file:{path}?mode=ro", *args, uri=True, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(sqlite3, "connect", read_only_connect)
        result = runner.invoke(main, ["import", str(exported), "r", "1", "--store", str(store)])
    assert result.exit_code == 1 and result.exception.__class__ is SystemExit
    assert result.output.startswith(f"error: the local store at {store} refused a write") and "readonly" in result.output
    assert result.output.count("\n") == 1

    def read_only_replace(source, target):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", read_only_replace)
        result = runner.invoke(main, ["import", str(exported), "r", "1", "--store", str(store)])
    assert result.exit_code == 1 and result.output.startswith("error: [Errno 30] Read-only file system")
