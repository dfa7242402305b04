"""Local-backend rules beyond the shared contract: atomic files, processes racing, private loads."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3

import pytest
import torch

from dacapo_store import CheckpointExistsError, CorruptCheckpointError, LocalWeightsStore, Weights, serialization
from dacapo_store.local import payload_file
from dacapo_store.local.catalog import switch_journal_mode
from dacapo_store.records import PartInfo
from dacapo_store.testing.contract import ToyRun
from dacapo_store.weights_store import Reservation

PROCESSES = 4


def _race_to_store(basedir: str, barrier, results) -> None:
    store = LocalWeightsStore(basedir)
    run = ToyRun("raced")
    barrier.wait()
    try:
        store.store_weights(run, 3)
        results.put("won")
    except CheckpointExistsError:
        results.put("lost")


@pytest.mark.slow  # racing processes (~25 s on 2 cores)
def test_processes_racing_on_one_checkpoint_have_exactly_one_winner(tmp_path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    workers = [
        context.Process(target=_race_to_store, args=(str(tmp_path), barrier, results))
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    outcomes = sorted(results.get(timeout=5) for _ in workers)
    assert outcomes == ["lost"] * (PROCESSES - 1) + ["won"]
    store = LocalWeightsStore(tmp_path)
    assert [c.iteration for c in store.list_checkpoints("raced")] == [3]
    store.verify("raced", 3)
    assert sorted(p.name for p in store.payload_dir.iterdir()) == sorted(
        p.location for p in store.list_checkpoints("raced")[0].parts.values()
    )


def test_payloads_are_renamed_into_place_and_failed_writes_leave_no_files(tmp_path, monkeypatch) -> None:
    store = LocalWeightsStore(tmp_path)
    run = ToyRun("r")
    info = store.store_weights(run, 1)
    assert sorted(p.name for p in store.payload_dir.iterdir()) == sorted(p.location for p in info.parts.values())

    def fail_commit(*args, **kwargs):
        raise KeyboardInterrupt("killed before the catalog commit")

    monkeypatch.setattr(LocalWeightsStore, "_commit", fail_commit)
    with pytest.raises(KeyboardInterrupt):
        store.store_weights(run, 2)
    assert sorted(p.name for p in store.payload_dir.iterdir()) == sorted(p.location for p in info.parts.values())
    assert store.latest_iteration("r") == 1


def test_stale_reservation_is_taken_over_but_a_fresh_one_is_not(tmp_path) -> None:
    store = LocalWeightsStore(tmp_path, stale_after=60.0)
    run = ToyRun("r")
    abandoned = Reservation.new("r", 5)  # a writer that died after reserving
    store._reserve(abandoned, False)
    with pytest.raises(CheckpointExistsError, match="being stored"):
        store.store_weights(run, 5)
    with store.catalog.transaction() as db:
        db.execute("UPDATE checkpoints SET heartbeat = heartbeat - 3600 WHERE token = ?", (abandoned.token,))
    store.store_weights(run, 5)
    assert store.latest_iteration("r") == 5


def test_stores_on_one_directory_share_the_catalog(tmp_path) -> None:
    LocalWeightsStore(tmp_path).store_weights(ToyRun("r"), 2)
    assert LocalWeightsStore(tmp_path).latest_iteration("r") == 2


def _stored(tmp_path):
    store = LocalWeightsStore(tmp_path)
    model = {"w": torch.arange(300_000.0), "b": torch.ones(7, dtype=torch.int64)}
    info = store.put_weights("r", 1, Weights(model, {"state": {}, "param_groups": []}))
    return store, model, store.payload_path(info.parts["model"].location)


def _overwrite(path) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xff" * os.fstat(fd).st_size, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("change", ["overwritten", "truncated", "removed"])
def test_returned_tensors_are_private_memory_whatever_happens_to_the_file(tmp_path, change) -> None:
    store, model, path = _stored(tmp_path)
    loaded = store.retrieve_weights("r", 1).model
    if change == "overwritten":
        _overwrite(path)
    elif change == "truncated":
        os.truncate(path, 0)  # a memory map of it would now SIGBUS on access
    else:
        store.remove("r", 1)
    assert all(torch.equal(loaded[key], model[key]) for key in model)
    loaded["w"] += 1  # the caller's to change, without touching the store
    assert torch.equal(loaded["w"], model["w"] + 1)
    if change == "removed":
        assert not any(store.payload_dir.iterdir())
    else:
        with pytest.raises(CorruptCheckpointError):
            store.retrieve_weights("r", 1)


def test_mmap_loads_map_the_verified_file(tmp_path) -> None:
    store, model, path = _stored(tmp_path)
    mapped = store.retrieve_weights("r", 1, mmap=True, optimizer=False).model
    assert all(torch.equal(mapped[key], model[key]) for key in model)
    _overwrite(path)  # the documented trade-off: a map shows later changes of the file
    assert not torch.equal(mapped["w"], model["w"])


def test_torch_archive_payloads_load_from_the_verified_memory_into_private_tensors(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(serialization.PAYLOAD_FORMAT_VARIABLE, "torch")
    store, model, path = _stored(tmp_path)
    assert path.read_bytes().startswith(serialization.ZIP_MAGIC)
    loaded = store.retrieve_weights("r", 1)
    assert all(torch.equal(loaded.model[key], model[key]) for key in model)
    assert loaded.optimizer == {"state": {}, "param_groups": []}
    loaded.model["w"] += 1  # the caller's own memory: the payload is unchanged
    assert torch.equal(store.retrieve_weights("r", 1).model["w"], model["w"])


def test_a_file_that_ends_early_while_read_is_corrupt(tmp_path) -> None:
    store, _, path = _stored(tmp_path)
    info = store.checkpoint_info("r", 1).parts["model"]
    longer = PartInfo(info.location, info.size + 10, info.digest)
    with open(path, "rb", buffering=0) as file, pytest.raises(CorruptCheckpointError, match="bytes"):
        payload_file._read_verified(file, longer, "the model part")


def test_a_store_syncs_each_payload_once_the_directory_once_and_commits_durably_once(tmp_path, monkeypatch) -> None:
    from benchmarks.workloads import sqlite_statement_spy
    from dacapo_store.local import payloads as local_payloads

    store = LocalWeightsStore(tmp_path)
    store.put_weights("r", 1, Weights({"w": torch.ones(3)}, None))  # the connection and schema exist
    synced, real_data_sync, real_fsync = [], local_payloads._sync_data, os.fsync

    def data_sync(fd):
        synced.append(("data", os.readlink(f"/proc/self/fd/{fd}")))
        real_data_sync(fd)

    def fsync(fd):
        synced.append(("full", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(local_payloads, "_sync_data", data_sync)
    monkeypatch.setattr(os, "fsync", fsync)
    with sqlite_statement_spy(store.catalog) as statements:
        info = store.put_weights("r", 2, Weights({"w": torch.ones(3)}, {"state": {}, "param_groups": []}))

    payloads = sorted(str(store.payload_path(part.location)) for part in info.parts.values())
    assert sorted(path for kind, path in synced if kind == "data") == payloads
    assert [path for kind, path in synced if kind == "full"] == [str(store.payload_dir)]
    durable, durable_commits = True, 0
    for statement in statements:
        if statement.startswith("PRAGMA synchronous="):
            durable = statement.endswith("FULL")
        durable_commits += statement == "COMMIT" and durable
    assert durable_commits == 1  # the commit; the reservation is not synced
    assert store.latest_iteration("r") == 2


@pytest.mark.parametrize("location", ["../outside.pt", "/etc/hostname", "sub/dir.model.pt", "..", ""])
def test_a_tampered_location_never_reaches_outside_the_store(tmp_path, caplog, location: str) -> None:
    from dacapo_store import CorruptCheckpointError

    store = LocalWeightsStore(tmp_path / "store")
    outside = tmp_path / "store" / "outside.pt"
    outside.parent.mkdir()  # opening the store creates nothing
    outside.write_bytes(b"precious")
    info = store.store_weights(ToyRun("r"), 1)
    with store.catalog.transaction() as db:
        db.execute("UPDATE checkpoints SET parts = replace(parts, ?, ?)", (info.parts["model"].location, location))
    for read in (store.retrieve_weights, store.verify):
        with pytest.raises(CorruptCheckpointError, match="invalid payload location"):
            read("r", 1)
    store.remove("r", 1)  # unlisted; the tampered location is refused, never deleted
    assert "could not be deleted" in caplog.text
    assert outside.read_bytes() == b"precious"
    assert store.list_checkpoints("r") == []


def test_gc_counts_only_what_it_deleted(tmp_path, monkeypatch) -> None:
    """A .partial file renamed into a committed checkpoint between gc's scan and its delete is
    not reported as removed (nor deleted)."""
    store = LocalWeightsStore(tmp_path)
    info = store.store_weights(ToyRun("r"), 1)
    final = store.payload_dir / info.parts["model"].location
    partial = final.with_name(final.name + ".partial")
    final.rename(partial)  # as a writer still writing it
    scan = store._find_garbage

    def scan_then_commit(cutoff):
        found = scan(cutoff)
        partial.rename(final)  # the writer renames it into place after the scan
        return found

    monkeypatch.setattr(store, "_find_garbage", scan_then_commit)
    report = store.collect_garbage()
    assert report.items == ()
    store.verify("r", 1)


def test_a_catalog_of_version_0_2_is_upgraded_when_opened(tmp_path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "catalog.sqlite3") as db:
        db.execute(
            "CREATE TABLE checkpoints (run TEXT NOT NULL, iteration INTEGER NOT NULL, state TEXT NOT NULL"
            " CHECK (state IN ('pending', 'complete')), token TEXT NOT NULL, created REAL NOT NULL,"
            " heartbeat REAL NOT NULL, parts TEXT, PRIMARY KEY (run, iteration))"
        )
        db.execute("INSERT INTO checkpoints VALUES ('old', 2, 'pending', ?, 0, 0, NULL)", ("a" * 32,))
    store = LocalWeightsStore(tmp_path)
    store.store_weights(ToyRun("r"), 1)
    store.store_weights(ToyRun("r"), 1, overwrite=True)
    assert [item.kind for item in store.collect_garbage().items] == ["stale-reservation"]
    assert store.latest_iteration("r") == 1


class _LockedThenFine:
    """A connection whose journal-mode switch SQLite refuses as locked ``refusals`` times."""

    def __init__(self, refusals: int, error: str = "database is locked") -> None:
        self.refusals, self.error, self.calls = refusals, error, 0

    def execute(self, sql: str):
        self.calls += 1
        assert sql == "PRAGMA journal_mode=WAL"
        if self.calls <= self.refusals:
            raise sqlite3.OperationalError(self.error)
        return self

    def fetchone(self) -> tuple[str]:
        return ("wal",)


def test_a_journal_mode_switch_refused_as_locked_is_retried_until_it_goes_through() -> None:
    """Processes opening a new catalog at once: SQLite refuses all but one switch to WAL as
    "locked" without waiting for its busy timeout; the others try again."""
    db = _LockedThenFine(refusals=3)
    assert switch_journal_mode(db, "wal") == "wal" and db.calls == 4


def test_a_journal_mode_switch_gives_up_after_its_timeout_and_never_retries_other_errors() -> None:
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        switch_journal_mode(_LockedThenFine(refusals=10**6), "wal", timeout=0.05)
    other = _LockedThenFine(refusals=1, error="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        switch_journal_mode(other, "wal")
    assert other.calls == 1
