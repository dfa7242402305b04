"""Garbage collection: what it removes, and that it never touches a live upload or a
complete checkpoint. Time is injected (``now``) or seeded into the storage; nothing sleeps."""

from __future__ import annotations

import os
import struct
import time
import uuid

import pytest
from bson import ObjectId

from dacapo_store import LocalWeightsStore

from dacapo_store.weights_store import (
    ORPHAN_CHUNKS,
    ORPHAN_PAYLOAD,
    PARTIAL_FILE,
    STALE_RESERVATION,
    Reservation,
)

from .conftest import seed_run, toy_weights

HOUR = 3600.0


def object_id_at(timestamp: float) -> ObjectId:
    """A unique ObjectId whose generation time is ``timestamp`` (what a chunk written then has)."""
    return ObjectId(struct.pack(">I", int(timestamp)) + os.urandom(8))


def set_heartbeat(store, run: str, iteration: int, heartbeat: float) -> None:
    """Make a pending reservation look as if its writer last showed life at ``heartbeat``."""
    if hasattr(store, "catalog"):
        with store.catalog.transaction() as db:
            db.execute(
                "UPDATE checkpoints SET heartbeat = ? WHERE run = ? AND iteration = ?", (heartbeat, run, iteration)
            )
    else:
        store.checkpoints.update_one({"run": run, "iteration": iteration}, {"$set": {"heartbeat": heartbeat}})


def orphan_payload(store, partial: bool = False) -> str:
    """A finished (or ``.partial``) payload that no reservation or checkpoint owns; its location."""
    token = uuid.uuid4().hex
    if hasattr(store, "payload_dir"):
        name = f"{token}.model.pt" + (".partial" if partial else "")
        (store.payload_dir / name).write_bytes(b"x" * 1000)
        return name
    return str(store.bucket.upload_from_stream("r/1/model", b"x" * 1000, metadata={"token": token}))


def orphan_chunks(store, written: float, chunks: int = 2) -> str:
    """GridFS chunks with no files document, last written at ``written``; their files id."""
    files_id = ObjectId()
    store.database.collection("weights.chunks").insert_many(
        [{"_id": object_id_at(written), "files_id": files_id, "n": n, "data": b"y" * 500} for n in range(chunks)]
    )
    return str(files_id)


def live_upload(store, run: str, iteration: int):
    """An upload in progress: reserved, model part written, optimizer part half written.

    Returns the reservation, the model's PartInfo and the location of the unfinished part."""
    reservation = Reservation.new(run, iteration)
    store._reserve(reservation, False)
    model = store._write_part(reservation, "model", toy_weights().model)
    if hasattr(store, "payload_dir"):
        (store.payload_dir / f"{reservation.token}.optimizer.pt.partial").write_bytes(b"z" * 300)
        unfinished = f"{reservation.token}.optimizer.pt.partial"
    else:
        unfinished = orphan_chunks(store, time.time(), chunks=1)  # a flushed buffer of the unclosed part
    return reservation, model, unfinished


def stale_upload(store, run: str, iteration: int, now: float):
    """An upload whose writer died two hours before ``now`` after writing its model part."""
    reservation = Reservation.new(run, iteration)
    store._reserve(reservation, False)
    store._write_part(reservation, "model", toy_weights().model)
    set_heartbeat(store, run, iteration, now - 2 * HOUR)
    return reservation


def payload_exists(store, location: str) -> bool:
    if hasattr(store, "payload_dir"):
        return (store.payload_dir / location).exists()
    oid = ObjectId(location)
    return (
        store.database.collection("weights.files").count_documents({"_id": oid})
        + store.database.collection("weights.chunks").count_documents({"files_id": oid})
    ) > 0


@pytest.fixture
def seeded(ops_store):
    """A store with complete checkpoints, one orphan of every kind, a stale and a live upload."""
    store, now = ops_store.weights, time.time()
    seed_run(ops_store, iterations=[100, 200])
    garbage = {
        "orphan": orphan_payload(store),
        "stale": stale_upload(store, "run_a", 300, now),
    }
    if ops_store.backend == "local":
        garbage["partial"] = orphan_payload(store, partial=True)
    else:
        garbage["chunks"] = orphan_chunks(store, now - 2 * HOUR)
    garbage["live"] = live_upload(store, "run_a", 400)
    return ops_store, garbage, now


def kinds(report) -> list[str]:
    return sorted(item.kind for item in report.items)


def test_dry_run_lists_garbage_and_deletes_nothing(seeded) -> None:
    ops_store, garbage, now = seeded
    report = ops_store.weights.collect_garbage(dry_run=True, now=now)
    extra = PARTIAL_FILE if ops_store.backend == "local" else ORPHAN_CHUNKS
    assert kinds(report) == sorted([ORPHAN_PAYLOAD, STALE_RESERVATION, extra])
    assert report.dry_run and report.bytes_freed > 0
    assert payload_exists(ops_store.weights, garbage["orphan"])
    assert ops_store.weights.collect_garbage(dry_run=True, now=now).items == report.items


def test_gc_removes_garbage_and_keeps_checkpoints_and_the_live_upload(seeded) -> None:
    ops_store, garbage, now = seeded
    store = ops_store.weights
    report = store.collect_garbage(now=now)
    assert not report.dry_run
    stale_item = next(item for item in report.items if item.kind == STALE_RESERVATION)
    assert (stale_item.run, stale_item.iteration, stale_item.token) == ("run_a", 300, garbage["stale"].token)
    assert stale_item.payloads == tuple(garbage["stale"].payloads) and stale_item.size > 0
    for location in [garbage["orphan"], *garbage["stale"].payloads, garbage.get("partial") or garbage["chunks"]]:
        assert not payload_exists(store, location)
    assert report.bytes_freed == sum(item.size for item in report.items)
    # complete checkpoints are intact; the stale slot is free again
    assert [store.verify("run_a", i).iteration for i in (100, 200)] == [100, 200]
    store.put_weights("run_a", 300, toy_weights())
    # the live upload is untouched
    reservation, model, unfinished = garbage["live"]
    assert payload_exists(store, model.location) and payload_exists(store, unfinished)
    assert store.collect_garbage(now=now).items == ()


def test_live_upload_finishes_after_gc(seeded) -> None:
    ops_store, garbage, now = seeded
    store, (reservation, model, _) = ops_store.weights, garbage["live"]
    store.collect_garbage(now=now)
    optimizer = store._write_part(reservation, "optimizer", toy_weights().optimizer)
    info = store._commit(reservation, {"model": model, "optimizer": optimizer})
    assert store.verify("run_a", 400) == info
    assert store.retrieve_weights("run_a", 400).optimizer is not None


def test_an_upload_silent_for_longer_than_older_than_is_abandoned(seeded) -> None:
    ops_store, garbage, now = seeded
    report = ops_store.weights.collect_garbage(now=now + 3 * HOUR, dry_run=True)
    stale = {(item.run, item.iteration) for item in report.items if item.kind == STALE_RESERVATION}
    assert stale == {("run_a", 300), ("run_a", 400)}
    kept = ops_store.weights.collect_garbage(older_than=10 * HOUR, now=now + 3 * HOUR, dry_run=True)
    assert STALE_RESERVATION not in kinds(kept) and ORPHAN_PAYLOAD in kinds(kept)


def test_a_reservation_that_heartbeats_after_the_scan_is_kept(seeded, monkeypatch) -> None:
    ops_store, garbage, now = seeded
    store, stale = ops_store.weights, garbage["stale"]
    scan = store._find_garbage

    def scan_then_writer_wakes_up(cutoff):
        found = scan(cutoff)
        set_heartbeat(store, "run_a", 300, now)
        return found

    monkeypatch.setattr(store, "_find_garbage", scan_then_writer_wakes_up)
    report = store.collect_garbage(now=now)
    assert STALE_RESERVATION not in kinds(report)
    assert all(payload_exists(store, location) for location in stale.payloads)


def test_files_that_are_not_local_payloads_are_never_touched(tmp_path) -> None:
    store = LocalWeightsStore(tmp_path)
    store.put_weights("r", 1, toy_weights(1))  # creates payloads/
    foreign = store.payload_dir / "README.txt"
    foreign.write_text("not ours")
    assert store.collect_garbage(older_than=store.stale_after, now=time.time() + 10 * HOUR).items == ()
    assert foreign.exists()


@pytest.mark.parametrize("older_than", [-1.0, 0.0, float("nan"), float("inf")])
def test_bad_older_than_is_refused(ops_store, older_than) -> None:
    with pytest.raises(ValueError, match="older_than"):
        ops_store.weights.collect_garbage(older_than=older_than)
    with pytest.raises(TypeError, match="older_than"):
        ops_store.weights.collect_garbage(older_than="1h")


def test_older_than_below_stale_after_is_refused(ops_store) -> None:
    """A live upload's heartbeat may be up to stale_after / 4 old: gc never looks closer."""
    store = ops_store.weights
    with pytest.raises(ValueError, match="stale_after"):
        store.collect_garbage(older_than=store.stale_after - 1, dry_run=True)
    assert store.collect_garbage(older_than=store.stale_after, dry_run=True).items == ()
    result = ops_store.cli("gc", "--older-than", f"{store.stale_after - 1:g}s")
    assert result.exit_code == 1 and "stale_after" in result.output


def test_chunks_whose_upload_closes_after_the_scan_are_kept(ops_store, monkeypatch) -> None:
    """The scan reads files, then chunks: an upload closing in between looks orphaned. Removal
    re-checks and deletes neither its files document nor its chunks."""
    if ops_store.backend != "mongomock":
        pytest.skip("GridFS chunks exist only in MongoDB")
    store, now = ops_store.weights, time.time()
    files_id = orphan_chunks(store, now - 2 * HOUR)
    scan = store._find_garbage

    def scan_then_upload_closes(cutoff):
        found = scan(cutoff)
        store.database.collection("weights.files").insert_one(
            {"_id": ObjectId(files_id), "length": 1000, "chunkSize": 500, "filename": "r/1/model"}
        )
        return found

    monkeypatch.setattr(store, "_find_garbage", scan_then_upload_closes)
    report = store.collect_garbage(now=now)
    assert ORPHAN_CHUNKS not in kinds(report)
    assert store.bucket.open_download_stream(ObjectId(files_id)).read() == b"y" * 1000
