"""A local store on a network filesystem (NFS, Lustre, GPFS, ...; detection faked here): never
in WAL mode; writes refused in one line pointing to MongoDB unless the user opts in to the
rollback journal; reads work and change nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dacapo_store import (
    ConfigurationError,
    LocalStatsStore,
    LocalWeightsStore,
    ReadOnlyStoreError,
    TrainingIterationStats,
)
from dacapo_store.experiments import LocalRunConfigStore
from dacapo_store.local import filesystems
from dacapo_store.local import payloads as local_payloads
from dacapo_store.local.catalog import CATALOG_FILENAME, NETWORK_FS_ENV
from dacapo_store.testing.contract import ToyRun, assert_state_equal


@pytest.fixture
def on_nfs(monkeypatch) -> None:
    """Every path is on NFS, as far as the store can tell."""
    monkeypatch.setattr(filesystems, "network_filesystem", lambda path: "nfs")
    monkeypatch.delenv(NETWORK_FS_ENV, raising=False)


@pytest.fixture
def run() -> ToyRun:
    return ToyRun("r")


def journal_mode(path: Path) -> str:
    db = sqlite3.connect(path / CATALOG_FILENAME)
    try:
        return db.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        db.close()


def test_writes_on_a_network_filesystem_are_refused_in_one_line_pointing_to_mongodb(tmp_path, on_nfs, run) -> None:
    path = tmp_path / "store"
    weights, stats, configs = LocalWeightsStore(path), LocalStatsStore(path), LocalRunConfigStore(path)
    for write in (
        lambda: weights.store_weights(run, 1),
        lambda: stats.store_training_stats(run, [TrainingIterationStats(1, 0.5, 0.1)]),
        lambda: configs.store_run_config({"name": "r"}),
    ):
        with pytest.raises(ReadOnlyStoreError) as caught:
            write()
        message = str(caught.value)
        assert "\n" not in message
        assert f"the local store at {path} is on a network filesystem (nfs)" in message
        assert "MongoDB" in message and f"{NETWORK_FS_ENV}=rollback-journal" in message
    assert weights.latest_iteration("r") is None and weights.list_runs() == []
    assert not path.exists()


def test_opting_in_on_a_network_filesystem_writes_with_a_rollback_journal_never_wal(
    tmp_path, on_nfs, monkeypatch, run
) -> None:
    monkeypatch.setenv(NETWORK_FS_ENV, "rollback-journal")
    path = tmp_path / "store"
    weights, stats = LocalWeightsStore(path), LocalStatsStore(path)
    weights.store_weights(run, 1)
    stats.store_validation_scores(run, 1, "val", {"dice": 0.5}, {"dice": True})
    weights.store_weights(run, 1, overwrite=True)  # a reservation's non-durable transaction too
    assert journal_mode(path) == "delete"
    assert not list(path.glob(f"{CATALOG_FILENAME}-*"))  # no -wal, no -shm, no journal left
    assert weights.retrieve_best("r", "val", "dice") == 1
    assert_state_equal(weights.retrieve_weights("r", 1).model, run.model.state_dict())


def test_a_wal_catalog_opted_in_on_a_network_filesystem_leaves_wal_mode(tmp_path, monkeypatch, run) -> None:
    path = tmp_path / "store"
    local = LocalWeightsStore(path)
    local.store_weights(run, 1)
    local.catalog.connection().close()
    assert journal_mode(path) == "wal"
    monkeypatch.setattr(filesystems, "network_filesystem", lambda path: "lustre")
    monkeypatch.setenv(NETWORK_FS_ENV, "rollback-journal")
    LocalWeightsStore(path).store_weights(run, 2)
    assert journal_mode(path) == "delete"


def test_reads_on_a_network_filesystem_work_without_the_opt_in(tmp_path, on_nfs, monkeypatch, run) -> None:
    path = tmp_path / "store"
    monkeypatch.setenv(NETWORK_FS_ENV, "rollback-journal")
    LocalWeightsStore(path).store_weights(run, 3)
    monkeypatch.delenv(NETWORK_FS_ENV)
    reader = LocalWeightsStore(path)
    assert reader.catalog.read_only and reader.latest_iteration("r") == 3
    assert_state_equal(reader.retrieve_weights("r", 3).model, run.model.state_dict())
    assert journal_mode(path) == "delete"


def test_a_bad_opt_in_value_names_the_variable(tmp_path, on_nfs, monkeypatch) -> None:
    monkeypatch.setenv(NETWORK_FS_ENV, "yes")
    with pytest.raises(ConfigurationError, match=f"\\${NETWORK_FS_ENV} must be 'rollback-journal'"):
        LocalWeightsStore(tmp_path / "store")


@pytest.mark.parametrize(
    "magic, mount_type, expected",
    [
        (0x6969, None, "nfs"),
        (0x0BD00BD0, None, "lustre"),
        (0x47504653, None, "gpfs"),
        (0x19830326, None, "beegfs"),
        (0x00C36400, None, "ceph"),
        (0xFF534D42, None, "cifs"),
        (0xEF53, None, None),  # ext4
        (0x58465342, None, None),  # xfs
        (filesystems.FUSE_MAGIC, "fuse.sshfs", "fuse.sshfs"),
        (filesystems.FUSE_MAGIC, "fuse.ntfs-3g", None),
    ],
)
def test_network_filesystems_are_told_by_their_statfs_magic(tmp_path, monkeypatch, magic, mount_type, expected) -> None:
    monkeypatch.setattr(filesystems, "_statfs_type", lambda path: magic)
    monkeypatch.setattr(filesystems, "_mount_type", lambda path: mount_type)
    assert filesystems.network_filesystem(tmp_path / "not" / "yet") == expected


def test_the_test_directory_is_told_local(tmp_path) -> None:
    assert filesystems._statfs_type(tmp_path) is not None
    assert filesystems.network_filesystem(tmp_path / "store") is None


def test_doctor_says_a_local_store_is_on_a_network_filesystem(tmp_path, on_nfs, monkeypatch, run) -> None:
    from click.testing import CliRunner

    from dacapo_store.cli import main

    monkeypatch.setenv(NETWORK_FS_ENV, "rollback-journal")
    LocalWeightsStore(tmp_path).store_weights(run, 1)
    for opted_in, expected in ((True, "writes allowed by $DACAPO_STORE_NETWORK_FS"), (False, "reading only; use MongoDB")):
        if not opted_in:
            monkeypatch.delenv(NETWORK_FS_ENV)
        result = CliRunner().invoke(main, ["doctor", "--store", str(tmp_path)])
        assert "on a network filesystem (nfs)" in result.output and expected in result.output, result.output


def test_loads_on_a_network_filesystem_read_payload_files_and_never_map_them(tmp_path, on_nfs, monkeypatch, run) -> None:
    """Another host deleting a mapped payload would turn the next page fault into SIGBUS."""
    monkeypatch.setenv(NETWORK_FS_ENV, "rollback-journal")
    LocalWeightsStore(tmp_path).store_weights(run, 1)
    mapped = []
    monkeypatch.setattr(local_payloads, "map_payload_file", lambda *args: mapped.append(args))
    reader = ToyRun("r")
    LocalWeightsStore(tmp_path, read_only=True).load_weights(reader, 1)
    assert mapped == []
    assert_state_equal(reader.model.state_dict(), run.model.state_dict())
