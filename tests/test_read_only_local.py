"""Read-only local stores: opened read-only on request or because the directory is not
writable, they serve every read and refuse every write; a read never creates a store."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from dacapo_store import (
    CheckpointNotFoundError,
    LocalStatsStore,
    LocalWeightsStore,
    NoScoreError,
    NotAuthorizedError,
    ReadOnlyStoreError,
    StoreNotFoundError,
    TrainingIterationStats,
)
from dacapo_store.cli import main
from dacapo_store.experiments import LocalRunConfigStore
from dacapo_store.local import filesystems
from dacapo_store.testing.contract import ToyRun, assert_state_equal


@pytest.fixture
def run() -> ToyRun:
    run = ToyRun("r")
    run.train_steps()
    return run


@pytest.fixture
def store_dir(tmp_path, run) -> Path:
    """A store with checkpoints 1 and 2, training stats, scores and a run config; its writer's
    connections closed (no -wal or -shm file left)."""
    path = tmp_path / "store"
    weights, stats, configs = LocalWeightsStore(path), LocalStatsStore(path), LocalRunConfigStore(path)
    weights.store_weights(run, 1)
    weights.store_weights(run, 2)
    stats.store_training_stats(run, [TrainingIterationStats(i, 1.0 / (i + 1), 0.1) for i in range(3)])
    stats.store_validation_scores(run, 1, "val", {"dice": 0.7}, {"dice": True})
    stats.store_validation_scores(run, 2, "val", {"dice": 0.9}, {"dice": True})
    configs.store_run_config({"name": "r", "depth": 2})
    for store in (weights, stats, configs):
        store.catalog.connection().close()
    return path


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (but SQLite's -shm and -wal files, which a
    reader's connection may create where the directory allows)."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.name.endswith(("-shm", "-wal"))
    }


def assert_reads_work(weights, stats, run: ToyRun) -> None:
    """Every read of run ``r`` with checkpoints 1 and 2 scored 0.7 and 0.9 (dataset ``val``,
    criterion ``dice``) returns what was stored."""
    assert weights.list_runs() == ["r"] and stats.list_runs() == ["r"]
    assert [c.iteration for c in weights.list_checkpoints("r")] == [1, 2]
    assert weights.latest_iteration("r") == 2
    assert weights.retrieve_best("r", "val", "dice") == 2
    assert_state_equal(weights.retrieve_weights("r", 2).model, run.model.state_dict())
    weights.verify("r", 1)
    assert [s.value for s in stats.retrieve_validation_scores("r")] == [0.7, 0.9]
    assert stats.best_validation_score("r", "val", "dice").value == 0.9


def assert_every_read_works(path: Path, run: ToyRun, **options) -> None:
    weights, stats = LocalWeightsStore(path, **options), LocalStatsStore(path, **options)
    assert_reads_work(weights, stats, run)
    assert [s.iteration for s in stats.retrieve_training_stats("r")] == [0, 1, 2]
    assert LocalRunConfigStore(path, **options).retrieve_run_config("r") == {"name": "r", "depth": 2}
    assert weights.collect_garbage(older_than=3600, dry_run=True).items == ()


def assert_every_write_is_refused(path: Path, run: ToyRun, error: type[Exception], **options) -> None:
    weights, stats = LocalWeightsStore(path, **options), LocalStatsStore(path, **options)
    attempts = [
        lambda: weights.store_weights(run, 3),
        lambda: weights.store_weights(run, 1, overwrite=True),
        lambda: weights.remove("r", 1),
        lambda: weights.collect_garbage(older_than=3600),
        lambda: stats.store_training_stats(run, [TrainingIterationStats(9, 0.1, 0.1)]),
        lambda: stats.store_validation_scores(run, 3, "val", {"dice": 1.0}, {"dice": True}),
        lambda: stats.delete_validation_scores("r"),
        lambda: LocalRunConfigStore(path, **options).store_run_config({"name": "other"}),
    ]
    for attempt in attempts:
        with pytest.raises(error) as caught:
            attempt()
        assert isinstance(caught.value, PermissionError)
        assert "not authorized to write" in str(caught.value) and str(path) in str(caught.value)


def test_a_store_opened_read_only_serves_every_read_and_changes_nothing(store_dir, run) -> None:
    before = snapshot(store_dir)
    assert_every_read_works(store_dir, run, read_only=True)
    assert_every_write_is_refused(store_dir, run, ReadOnlyStoreError, read_only=True)
    assert snapshot(store_dir) == before


def test_a_read_only_store_sees_what_a_live_writer_commits(store_dir, run) -> None:
    writer = LocalWeightsStore(store_dir)
    reader = LocalWeightsStore(store_dir, read_only=True)
    assert reader.latest_iteration("r") == 2
    writer.store_weights(run, 5)  # into the write-ahead log, with the writer still open
    assert reader.latest_iteration("r") == 5
    assert_state_equal(reader.retrieve_weights("r", 5).model, run.model.state_dict())


@pytest.mark.parametrize("missing", ["directory", "catalog"])
def test_reading_a_store_that_does_not_exist_names_the_path_and_creates_nothing(tmp_path, missing) -> None:
    path = tmp_path / "nowhere"
    if missing == "catalog":
        path.mkdir()
    for open_store in (LocalWeightsStore, LocalStatsStore, LocalRunConfigStore):
        with pytest.raises(StoreNotFoundError, match=f"no store at {path}") as caught:
            open_store(path, read_only=True)
        assert isinstance(caught.value, FileNotFoundError)
    if missing == "directory":
        assert not path.exists()
    else:
        assert list(path.iterdir()) == []


def test_reading_a_store_opened_for_writing_on_a_missing_path_creates_nothing_and_says_so(tmp_path, run) -> None:
    path = tmp_path / "typo"
    weights, stats, configs = LocalWeightsStore(path), LocalStatsStore(path), LocalRunConfigStore(path)
    assert weights.list_runs() == [] and weights.latest_iteration("r") is None and weights.list_checkpoints("r") == []
    assert stats.list_runs() == [] and stats.retrieve_training_stats("r") == []
    assert stats.retrieve_validation_scores("r") == [] and configs.list_run_configs() == []
    assert weights.collect_garbage(older_than=3600, dry_run=True).items == ()
    missing = f"no store at {path}: the directory does not exist"
    for lookup in (lambda: weights.retrieve_weights("r", 1), lambda: weights.verify("r", 1)):
        with pytest.raises(CheckpointNotFoundError, match=missing):
            lookup()
    for best in (weights.retrieve_best, stats.best_validation_score):
        with pytest.raises(NoScoreError, match=missing):
            best("r", "val", "dice")
    assert not path.exists()
    weights.store_weights(run, 1)  # a write creates the store, as ever
    assert weights.latest_iteration("r") == 1


def test_an_unwritable_wal_catalog_whose_files_could_change_is_refused_not_read_immutable(
    store_dir, monkeypatch
) -> None:
    """``immutable=1`` ignores every lock: only a catalog that really cannot change is read so."""
    monkeypatch.setattr(filesystems, "cannot_change", lambda path: False)
    with unwritable(store_dir):
        with pytest.raises(NotAuthorizedError, match=f"cannot read the local store at {store_dir} safely"):
            LocalWeightsStore(store_dir).list_runs()


@pytest.mark.parametrize(
    "command", [["du"], ["runs"], ["checkpoints", "r"], ["scores", "r"], ["best", "r", "val", "dice"], ["verify"]]
)
def test_cli_read_commands_on_a_store_that_does_not_exist_fail_and_create_nothing(tmp_path, monkeypatch, command) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DACAPO_STORE_URI", "garbage")
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1
    assert f"error: no store at {tmp_path / 'garbage'}: the directory does not exist" in result.output
    assert not (tmp_path / "garbage").exists()


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """Make ``path`` (a directory tree) unwritable for this process: permission bits for a
    normal user; for root, which ignores them, the immutable attribute (``chattr +i``)."""
    entries = sorted(path.rglob("*"), reverse=True) + [path]
    if os.geteuid() != 0:
        modes = {entry: entry.stat().st_mode for entry in entries}
        for entry in entries:
            entry.chmod(stat.S_IMODE(modes[entry]) & ~0o222)
        try:
            yield
        finally:
            for entry in reversed(entries):
                entry.chmod(stat.S_IMODE(modes[entry]))
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root, which ignores permissions, and `chattr +i` is not available here")
    try:
        subprocess.run([chattr, "+i", *map(str, entries[:-1])], check=True, capture_output=True)
        assert not os.access(path, os.W_OK)
        yield
    finally:
        subprocess.run([chattr, "-i", *map(str, entries)], capture_output=True)


def as_if_it_cannot_change(monkeypatch) -> None:
    """Without root, :func:`unwritable` uses chmod, which the owner may undo: let the store read
    it as it would a read-only mount (with root, ``chattr +i`` really makes it unchangeable)."""
    if os.geteuid() != 0:
        monkeypatch.setattr(filesystems, "cannot_change", lambda path: True)


def test_an_unwritable_directory_is_opened_read_only_and_serves_every_read(store_dir, run, monkeypatch) -> None:
    as_if_it_cannot_change(monkeypatch)
    before = snapshot(store_dir)
    with unwritable(store_dir):
        assert LocalWeightsStore(store_dir).catalog.read_only_reason == "not writable by this user"
        assert_every_read_works(store_dir, run)
        assert_every_write_is_refused(store_dir, run, NotAuthorizedError)
    assert snapshot(store_dir) == before


WRITER = """
import sys
from dacapo_store import LocalWeightsStore, Weights
from dacapo_store.testing.contract import ToyRun
LocalWeightsStore(sys.argv[1]).put_weights("r", 7, Weights(ToyRun("r").model.state_dict(), None))
print("stored", flush=True)
sys.stdin.readline()
"""


def test_an_unwritable_directory_with_a_live_writers_log_is_read_with_it(store_dir) -> None:
    # another process commits checkpoint 7 and stays open: it is in the -wal file, with its -shm
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "stored"
        assert (store_dir / "catalog.sqlite3-shm").exists()
        with unwritable(store_dir):
            reader = LocalWeightsStore(store_dir)
            assert reader.catalog.read_only and reader.latest_iteration("r") == 7
    finally:
        writer.communicate("\n", timeout=60)


def test_cli_read_commands_work_on_an_unwritable_directory_and_writes_fail_clearly(
    store_dir, run, tmp_path, monkeypatch
) -> None:
    as_if_it_cannot_change(monkeypatch)
    exported = tmp_path / "exported.pt"
    with unwritable(store_dir):
        runner = CliRunner()
        runs = runner.invoke(main, ["runs", "--store", str(store_dir)])
        assert runs.exit_code == 0, runs.output
        assert runs.stdout.splitlines()[1].split()[:3] == ["r", "2", "2"]
        for command in (["checkpoints", "r"], ["scores", "r"], ["best", "r", "val", "dice"], ["du"], ["verify"],
                        ["export", "r", "2", "-o", str(exported)], ["gc", "--dry-run"],
                        ["prune", "r", "--keep-last", "1", "--dry-run"]):
            result = runner.invoke(main, [*command, "--store", str(store_dir)])
            assert result.exit_code == 0, (command, result.output)
        refused = runner.invoke(main, ["import", str(exported), "r", "9", "--store", str(store_dir)])
        assert refused.exit_code == 1
        assert "not authorized to write" in refused.output and "not writable by this user" in refused.output
