"""Server faults injected on the wire, one per test: each call either succeeds after retrying
or fails with a clear error, and nothing half-written ever becomes visible.

Retries run on a fake clock (no real waiting); ``clock.sleeps`` shows whether the store's own
retry policy had to step in (an empty list: pymongo's single retry sufficed).
"""

from __future__ import annotations

import logging

import pytest
from bson import ObjectId

from dacapo_store import (
    NotAuthorizedError,
    StoreConnectionError,
    TrainingIterationStats,
    WriteConcernFailedError,
)
from dacapo_store.testing.contract import ToyRun, assert_state_equal
from dacapo_store.testing.wire import (
    EXCEEDED_TIME_LIMIT,
    INTERRUPTED_DUE_TO_REPL_STATE_CHANGE,
    NOT_WRITABLE_PRIMARY,
    PRIMARY_STEPPED_DOWN,
    UNAUTHORIZED,
    Fault,
)

from .conftest import DATABASE, open_weights

ENOUGH = 10_000
"""More failures than any retry budget outlasts."""


@pytest.fixture
def run() -> ToyRun:
    run = ToyRun("r")
    run.train_steps()
    return run


def stored(server, weights) -> dict:
    """What the database holds: catalog entries, files ids, and the files ids of all chunks."""
    db = server.database(DATABASE)
    return {
        "catalog": list(db[weights.checkpoints.name].find({}, {"_id": False})),
        "files": {str(d["_id"]) for d in db[weights.bucket_files.name].find({})},
        "chunked": {str(d["files_id"]) for d in db[weights.bucket_chunks.name].find({})},
    }


def assert_consistent(server, weights, iterations) -> None:
    """Exactly ``iterations`` are stored, complete; no pending entry or claim; every payload
    belongs to a stored checkpoint and every chunk to a payload."""
    state = stored(server, weights)
    assert sorted(entry["iteration"] for entry in state["catalog"]) == sorted(iterations)
    assert all(entry["state"] == "complete" and "replacement" not in entry for entry in state["catalog"])
    referenced = {part["location"] for entry in state["catalog"] for part in entry["parts"].values()}
    assert state["files"] == referenced
    assert state["chunked"] == referenced


def commands(server, name, weights, collection):
    return server.sent(name, getattr(weights, collection).name)


def inject(server, *faults: Fault) -> tuple[Fault, ...]:
    """Inject ``faults`` and return them, to check afterwards that each fired (see fired)."""
    server.inject(*faults)
    return faults


def fired(*faults: Fault) -> bool:
    """Whether every one of ``faults`` fired as often as it was meant to (the server served
    each injected reply)."""
    return all(fault.fired == fault.times for fault in faults)


# ---- failover: retried until it works ----------------------------------------------------


def test_one_not_writable_primary_is_retried_by_pymongo(server, weights, run, clock) -> None:
    server.inject(Fault.error("insert", weights.checkpoints.name, NOT_WRITABLE_PRIMARY))
    weights.store_weights(run, 1)
    assert len(commands(server, "insert", weights, "checkpoints")) == 2
    assert clock.sleeps == []
    assert_consistent(server, weights, [1])


@pytest.mark.parametrize("code", [NOT_WRITABLE_PRIMARY, PRIMARY_STEPPED_DOWN, INTERRUPTED_DUE_TO_REPL_STATE_CHANGE])
@pytest.mark.parametrize(
    "command, collection",
    [
        ("insert", "checkpoints"),  # reserve
        ("insert", "bucket_chunks"),  # part upload
        ("insert", "bucket_files"),  # part upload, last step
        ("findAndModify", "checkpoints"),  # commit
    ],
)
def test_an_election_during_any_write_step_is_outlasted(server, weights, run, clock, code, command, collection) -> None:
    server.inject(Fault.error(command, getattr(weights, collection).name, code, times=5))
    info = weights.store_weights(run, 1)
    assert clock.sleeps, "the store's own retries stepped in after pymongo's one retry"
    assert_consistent(server, weights, [1])
    assert_state_equal(weights.retrieve_weights("r", 1).model, run.model.state_dict())
    assert info == weights.checkpoint_info("r", 1)


def test_a_reservation_whose_reply_was_lost_is_recognised_on_retry(server, weights, run, clock) -> None:
    server.inject(Fault.hangup("insert", weights.checkpoints.name, times=2, execute=True))
    weights.store_weights(run, 1)
    assert len(commands(server, "insert", weights, "checkpoints")) == 3  # the third hits the unique key
    assert_consistent(server, weights, [1])


def test_a_replacement_claim_whose_reply_was_lost_is_recognised_on_retry(server, weights, run, clock) -> None:
    weights.store_weights(run, 1)
    run.train_steps(1)
    faults = inject(server, Fault.hangup("update", weights.checkpoints.name, times=2, execute=True))
    weights.store_weights(run, 1, overwrite=True)
    assert fired(*faults)
    assert_consistent(server, weights, [1])
    assert_state_equal(weights.retrieve_weights("r", 1).model, run.model.state_dict())


def test_a_commit_that_landed_before_the_primary_stepped_down_is_recognised_on_retry(server, weights, run, clock) -> None:
    server.inject(Fault.error("findAndModify", weights.checkpoints.name, PRIMARY_STEPPED_DOWN, times=2, execute=True))
    info = weights.store_weights(run, 1)
    assert len(commands(server, "findAndModify", weights, "checkpoints")) == 3
    assert info.iteration == 1 and clock.sleeps
    assert_consistent(server, weights, [1])


@pytest.mark.parametrize("execute", [False, True], ids=["before-the-write", "after-the-write"])
def test_a_connection_closed_mid_upload_restarts_that_part_under_a_new_id(server, weights, run, clock, execute) -> None:
    # skip=1: the model part's chunks go through, the optimizer part's are cut off
    server.inject(Fault.hangup("insert", weights.bucket_chunks.name, times=2, skip=1, execute=execute))
    info = weights.store_weights(run, 1)
    uploaded = [doc["_id"] for c in commands(server, "insert", weights, "bucket_chunks") for doc in c.body["documents"]]
    assert len(uploaded) > 0
    assert_consistent(server, weights, [1])  # the cut-off attempt's chunks were aborted
    optimizer_ids = {doc["files_id"] for c in commands(server, "insert", weights, "bucket_chunks")[1:]
                     for doc in c.body["documents"]}
    assert len(optimizer_ids) == 2 and ObjectId(info.parts["optimizer"].location) in optimizer_ids
    assert_state_equal(weights.retrieve_weights("r", 1).optimizer, run.optimizer.state_dict())


def test_a_partial_upload_whose_abort_failed_is_deleted_once_the_part_is_stored(server, weights, run, clock) -> None:
    faults = inject(
        server,
        Fault.hangup("insert", weights.bucket_chunks.name, times=2, skip=1, execute=True),
        Fault.error("delete", weights.bucket_chunks.name, NOT_WRITABLE_PRIMARY, times=2),  # the abort
    )
    weights.store_weights(run, 1)
    assert fired(*faults)
    assert_consistent(server, weights, [1])


def test_exceeded_time_limit_is_retried(server, weights, run, clock) -> None:
    faults = inject(server, Fault.error("findAndModify", weights.checkpoints.name, EXCEEDED_TIME_LIMIT, times=3))
    weights.store_weights(run, 1)
    assert fired(*faults) and len(commands(server, "findAndModify", weights, "checkpoints")) == 4
    assert_consistent(server, weights, [1])


def test_a_heartbeat_during_an_election_is_retried(server, clock, run) -> None:
    weights = open_weights(server, clock, stale_after=1e-9)  # a heartbeat on every write
    server.inject(Fault.error("update", weights.checkpoints.name, NOT_WRITABLE_PRIMARY, times=4))
    weights.store_weights(run, 1)
    assert len(commands(server, "update", weights, "checkpoints")) > 4
    assert_consistent(server, weights, [1])


def test_a_remove_whose_reply_was_lost_completes(server, weights, run, clock) -> None:
    weights.store_weights(run, 1)
    weights.store_weights(run, 2)
    faults = inject(server, Fault.hangup("findAndModify", weights.checkpoints.name, times=2, execute=True))
    weights.remove("r", 2)
    assert fired(*faults)
    assert_consistent(server, weights, [1])


def test_a_read_interrupted_mid_stream_is_read_again(server, weights, run, clock) -> None:
    weights.store_weights(run, 1)
    faults = inject(server, Fault.hangup("find", weights.bucket_chunks.name, times=3))
    assert_state_equal(weights.retrieve_weights("r", 1).model, run.model.state_dict())
    assert fired(*faults)


def test_stats_and_scores_writes_are_retried(server, stats, run, clock) -> None:
    faults = inject(
        server,
        Fault.error("insert", stats.training_stats.name, NOT_WRITABLE_PRIMARY, times=3, execute=True),
        Fault.error("insert", stats.scores.name, PRIMARY_STEPPED_DOWN, times=3, execute=True),
    )
    stats.store_training_stats(run, [TrainingIterationStats(i, 0.5, 0.1) for i in range(3)])
    stats.store_validation_scores(run, 1, "val", {"dice": 0.5}, {"dice": True})
    assert fired(*faults)
    assert [s.iteration for s in stats.retrieve_training_stats(run)] == [0, 1, 2]
    assert [s.value for s in stats.retrieve_validation_scores(run)] == [0.5]


# ---- failures that retrying cannot fix -----------------------------------------------------


def test_an_outage_beyond_the_budget_fails_clearly_and_leaves_nothing(server, weights, run, clock) -> None:
    server.inject(Fault.error("insert", weights.checkpoints.name, NOT_WRITABLE_PRIMARY, times=ENOUGH))
    with pytest.raises(StoreConnectionError) as caught:
        weights.store_weights(run, 1)
    message = str(caught.value)
    assert "reserving checkpoint 1 of run 'r'" in message and "retried for up to 60 s" in message
    assert 0 < clock.now <= 60 + 5.0
    assert_consistent(server, weights, [])


def test_a_failed_clean_up_does_not_block_the_next_store_of_that_checkpoint(server, weights, run, clock) -> None:
    commit, clean_up = inject(
        server,
        Fault.error("findAndModify", weights.checkpoints.name, NOT_WRITABLE_PRIMARY, times=ENOUGH),
        Fault.error("delete", None, NOT_WRITABLE_PRIMARY, times=ENOUGH),
    )
    with pytest.raises(StoreConnectionError, match="committing"):
        weights.store_weights(run, 1)
    assert commit.fired and clean_up.fired
    assert [entry["state"] for entry in stored(server, weights)["catalog"]] == ["pending"]  # invisible
    assert weights.list_checkpoints("r") == []
    server.clear()  # the primary is back
    weights.store_weights(run, 1)
    assert_consistent(server, weights, [1])


def test_unauthorized_is_a_permission_error_not_retried_and_nothing_stays(server, weights, run, clock) -> None:
    server.inject(Fault.error("insert", weights.bucket_chunks.name, UNAUTHORIZED))
    with pytest.raises(NotAuthorizedError) as caught:
        weights.store_weights(run, 1)
    assert isinstance(caught.value, PermissionError)
    assert "not authorized to write" in str(caught.value) and "uploading checkpoint 1" in str(caught.value)
    assert clock.sleeps == []
    assert_consistent(server, weights, [])


# ---- writeConcernError: the call fails, its effect is undone -------------------------------


@pytest.mark.parametrize(
    "command, collection, step",
    [
        ("insert", "checkpoints", "reserving"),
        ("insert", "bucket_chunks", "uploading"),
        ("insert", "bucket_files", "uploading"),
        ("findAndModify", "checkpoints", "committing"),
    ],
)
def test_a_write_concern_error_fails_the_store_and_nothing_stays_visible(
    server, weights, run, clock, command, collection, step
) -> None:
    server.inject(Fault.write_concern(command, getattr(weights, collection).name))
    with pytest.raises(WriteConcernFailedError) as caught:
        weights.store_weights(run, 1)
    message = str(caught.value)
    assert step in message and "not confirmed under write concern" in message and "majority" in message
    assert weights.list_checkpoints("r") == [] and weights.latest_iteration("r") is None
    assert_consistent(server, weights, [])


def test_a_write_concern_error_on_a_heartbeat_fails_the_store_and_nothing_stays(server, clock, run) -> None:
    weights = open_weights(server, clock, stale_after=1e-9)  # a heartbeat on every write
    server.inject(Fault.write_concern("update", weights.checkpoints.name))
    with pytest.raises(WriteConcernFailedError, match="refreshing the reservation"):
        weights.store_weights(run, 1)
    assert_consistent(server, weights, [])


def test_a_write_concern_error_on_an_overwrite_keeps_the_old_checkpoint(server, weights, run, clock) -> None:
    weights.store_weights(run, 1)
    old = run.model.state_dict()
    old = {key: tensor.clone() for key, tensor in old.items()}
    run.train_steps(2)
    server.inject(Fault.write_concern("findAndModify", weights.checkpoints.name))
    with pytest.raises(WriteConcernFailedError):
        weights.store_weights(run, 1, overwrite=True)
    assert_consistent(server, weights, [1])
    assert_state_equal(weights.retrieve_weights("r", 1).model, old)


def test_a_write_concern_error_fails_a_remove_and_leaves_only_garbage(server, weights, run, clock) -> None:
    weights.store_weights(run, 1)
    server.inject(Fault.write_concern("findAndModify", weights.checkpoints.name))
    with pytest.raises(WriteConcernFailedError):
        weights.remove("r", 1)
    assert weights.list_checkpoints("r") == []  # unlisted on the primary; payloads are garbage
    report = weights.collect_garbage(older_than=weights.stale_after, now=2**40)
    assert len(report.items) == 2
    assert_consistent(server, weights, [])


@pytest.mark.parametrize("which", ["training_stats", "scores", "scores-replaced"])
def test_a_write_concern_error_fails_stats_and_score_writes(server, stats, run, clock, which) -> None:
    if which == "scores-replaced":  # an existing score goes through replace (an update)
        stats.store_validation_scores(run, 1, "val", {"dice": 0.4}, {"dice": True})
        server.inject(Fault.write_concern("update", stats.scores.name))
    else:
        server.inject(Fault.write_concern("insert", getattr(stats, which).name))
    with pytest.raises(WriteConcernFailedError, match="not confirmed under write concern"):
        if which == "training_stats":
            stats.store_training_stats(run, [TrainingIterationStats(0, 0.5, 0.1)])
        else:
            stats.store_validation_scores(run, 1, "val", {"dice": 0.5}, {"dice": True})


def test_a_write_concern_timeout_from_the_uri_is_sent_and_reported(server, clock, run, caplog) -> None:
    weights = open_weights(server, clock, uri_options={"wtimeoutMS": "2000"})
    server.inject(Fault.write_concern("insert", weights.checkpoints.name))
    with caplog.at_level(logging.WARNING), pytest.raises(WriteConcernFailedError) as caught:
        weights.store_weights(run, 1)
    assert "'wtimeout': 2000" in str(caught.value)
    [reserve] = commands(server, "insert", weights, "checkpoints")
    assert reserve.write_concern == {"w": "majority", "j": True, "wtimeout": 2000}


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_a_write_concern_error_whose_undo_fails_is_never_a_success(server, weights, run, clock, overwrite) -> None:
    if overwrite:
        weights.store_weights(run, 1)
        run.train_steps(1)
    # the undo puts the old parts back (an update; the first update is the replacement claim)
    # or deletes the new entry
    undo = Fault.error("update", weights.checkpoints.name, NOT_WRITABLE_PRIMARY, times=ENOUGH, skip=1) if overwrite \
        else Fault.error("delete", weights.checkpoints.name, NOT_WRITABLE_PRIMARY, times=ENOUGH)
    server.inject(Fault.write_concern("findAndModify", weights.checkpoints.name), undo)
    with pytest.raises(WriteConcernFailedError) as caught:
        weights.store_weights(run, 1, overwrite=overwrite)
    message = str(caught.value)
    assert "committing checkpoint 1 of run 'r'" in message and "could not be undone" in message
    assert "may or may not survive" in message
    server.clear()  # the primary is back: the commit did survive here, whole
    assert [info.iteration for info in weights.list_checkpoints("r")] == [1]
    weights.collect_garbage(older_than=weights.stale_after, now=2**40)  # a replaced version's payloads
    assert_consistent(server, weights, [1])
    assert_state_equal(weights.retrieve_weights("r", 1).model, run.model.state_dict())


def test_a_fault_that_never_fired_is_reported(server) -> None:
    fault = Fault.error("insert", "no-such-collection")
    server.inject(fault)
    server.clear()  # forgotten as a pending fault, still known as injected
    assert server.unfired() == [fault]
    server.reset()  # else the check after every test fails this one
