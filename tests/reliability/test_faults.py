"""Failures injected at every phase of a write and of a remove, on every backend.

After each fault: no partial checkpoint is visible, ``latest_iteration`` is unchanged (or
correctly advanced when the commit reached the catalog), every other checkpoint still verifies,
and garbage collection reclaims whatever the failed operation left behind.

A process that dies outright cleans nothing up; on mongomock (one process only) that is
simulated by disabling the clean-up, on the local backend by a real child process that calls
``os._exit`` inside the phase (see ``test_killed_process.py``).
"""

from __future__ import annotations

import pytest

from dacapo_store import CheckpointExistsError, WeightsStore
from dacapo_store.errors import ReservationLostError
from dacapo_store.weights_store import Reservation
from dacapo_store.serialization import HashingWriter

from .conftest import Backend, make_weights, tag_of
from .faults import (
    RUN,
    TARGET,
    InjectedFault,
    assert_unharmed,
    collect_garbage,
    fail_after_bytes,
    fail_on_call,
    model_part_size,
    has_gc,
    seed,
)


WRITE_PHASES = {
    "before the upload": lambda backend, mp: mp.setattr(HashingWriter, "__init__", fail_after_bytes(0)),
    "between chunks of the model part": lambda backend, mp: mp.setattr(
        HashingWriter, "__init__", fail_after_bytes(2500)
    ),
    "between the parts": lambda backend, mp: mp.setattr(
        HashingWriter, "__init__", fail_after_bytes(model_part_size(backend.weights) + 10)
    ),
    "after the chunks, before the catalog commit": lambda backend, mp: mp.setattr(
        backend.weights, "_commit", fail_on_call(backend.weights._commit)
    ),
}


@pytest.mark.parametrize("phase", list(WRITE_PHASES))
def test_write_fault_aborts_cleanly(backend: Backend, monkeypatch: pytest.MonkeyPatch, phase: str) -> None:
    seed(backend)
    with monkeypatch.context() as mp:
        WRITE_PHASES[phase](backend, mp)
        with pytest.raises(InjectedFault):
            backend.weights.put_weights(RUN, TARGET, make_weights(TARGET))
    assert_unharmed(backend)
    backend.assert_clean()  # the failed writer cleaned up after itself
    backend.weights.put_weights(RUN, TARGET, make_weights(TARGET))  # and the key is free again
    assert_unharmed(backend, target_stored=True)


@has_gc
@pytest.mark.parametrize("phase", list(WRITE_PHASES))
def test_write_fault_without_cleanup_is_collected(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    """A writer on another host dies in the phase (nothing cleans up, and its death cannot be
    verified from here): invisible, its fresh reservation is respected, and gc reclaims it all."""
    seed(backend)
    with monkeypatch.context() as mp:
        WRITE_PHASES[phase](backend, mp)
        mp.setattr(backend.weights, "_abandon", lambda reservation: None)
        mp.setattr("dacapo_store.owner.socket.gethostname", lambda: "another-host")
        with pytest.raises(InjectedFault):
            backend.weights.put_weights(RUN, TARGET, make_weights(TARGET))
    assert_unharmed(backend)
    with pytest.raises(CheckpointExistsError, match="being stored by another writer"):
        backend.reopen().put_weights(RUN, TARGET, make_weights(99))
    collect_garbage(backend)
    assert_unharmed(backend)
    backend.weights.put_weights(RUN, TARGET, make_weights(TARGET))
    assert_unharmed(backend, target_stored=True)


@pytest.mark.parametrize("phase", list(WRITE_PHASES))
def test_a_failed_clean_up_does_not_block_the_iteration(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    """The write fails and so does its clean-up (a full disk fails both): the reservation is
    left, but its upload no longer runs, so the next store of that iteration (from this
    process, on any store object) takes it over at once, and the store's next write retries
    the clean-up."""
    seed(backend)
    with monkeypatch.context() as mp:
        WRITE_PHASES[phase](backend, mp)
        mp.setattr(backend.weights, "_abandon", fail_on_call(backend.weights._abandon))
        with pytest.raises(InjectedFault):
            backend.weights.put_weights(RUN, TARGET, make_weights(TARGET))
    assert_unharmed(backend)
    assert backend.pending() == 1
    backend.reopen().put_weights(RUN, TARGET, make_weights(TARGET))
    assert_unharmed(backend, target_stored=True)
    backend.weights.put_weights(RUN, TARGET + 1, make_weights(TARGET + 1))  # retries the clean-up
    backend.assert_clean()


def test_commit_applied_but_reply_lost(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog commit succeeds but the caller sees an error (a lost reply): the checkpoint
    is stored and whole, never listed with its payloads deleted by the clean-up, and the
    writer gets it back instead of an error (a retry would only meet CheckpointExistsError)."""
    seed(backend)
    with monkeypatch.context() as mp:
        mp.setattr(backend.weights, "_commit", fail_on_call(backend.weights._commit, after=True))
        info = backend.weights.put_weights(RUN, TARGET, make_weights(TARGET))
    assert (info.run, info.iteration) == (RUN, TARGET)
    assert_unharmed(backend, target_stored=True)
    assert tag_of(backend.weights.retrieve_weights(RUN, TARGET)) == TARGET
    backend.assert_clean()


def test_writer_whose_reservation_was_taken_over_stops_at_its_next_heartbeat(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(backend)
    monkeypatch.setattr(backend.weights, "stale_after", 0.0)  # a heartbeat on every write
    real_heartbeat = backend.weights._heartbeat

    def taken_over(reservation):
        backend.weights._abandon(Reservation(reservation.run, reservation.iteration, reservation.token))
        real_heartbeat(reservation)

    monkeypatch.setattr(backend.weights, "_heartbeat", taken_over)
    with pytest.raises(ReservationLostError, match="taken over"):
        backend.weights.put_weights(RUN, TARGET, make_weights(TARGET))
    monkeypatch.undo()
    assert_unharmed(backend)


def test_heartbeat_failure_aborts_cleanly(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(backend)
    monkeypatch.setattr(backend.weights, "stale_after", 0.0)  # a heartbeat on every write
    with monkeypatch.context() as mp:
        mp.setattr(backend.weights, "_heartbeat", fail_on_call(backend.weights._heartbeat))
        with pytest.raises(InjectedFault):
            backend.weights.put_weights(RUN, TARGET, make_weights(TARGET))
    assert_unharmed(backend)
    backend.assert_clean()


REMOVE_PHASES = {
    "before the catalog entry is dropped": ("_unlist", 1, False),
    "before the first payload is deleted": ("_delete_payload", 1, False),
    "between the payload deletes": ("_delete_payload", 2, False),
}


@pytest.mark.parametrize("phase", list(REMOVE_PHASES))
def test_remove_fault_leaves_checkpoint_whole_or_gone(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, phase: str
) -> None:
    """A fault before the catalog entry is dropped fails the remove and keeps the checkpoint;
    after it, the remove is complete (the checkpoint is gone), and the payloads it could not
    delete are reported and left to gc."""
    seed(backend)
    backend.weights.put_weights(RUN, TARGET, make_weights(TARGET))
    method, call, after = REMOVE_PHASES[phase]
    intact = method == "_unlist"
    with monkeypatch.context() as mp:
        mp.setattr(backend.weights, method, fail_on_call(getattr(backend.weights, method), call, after))
        if intact:
            with pytest.raises(InjectedFault):
                backend.weights.remove(RUN, TARGET)
        else:
            backend.weights.remove(RUN, TARGET)
            assert "could not be deleted" in caplog.text and "dacapo-store gc" in caplog.text
    assert_unharmed(backend, target_stored=intact)  # whole (and verifying) or gone, never half
    if intact:
        backend.assert_clean()
        backend.weights.remove(RUN, TARGET)
        assert_unharmed(backend)
        backend.assert_clean()
    else:
        collect_garbage_if_available(backend)


def collect_garbage_if_available(backend: Backend) -> None:
    """The interrupted remove left payloads behind; gc (when present) reclaims them."""
    assert backend.payloads() - backend.referenced(), "expected leftover payloads"
    if hasattr(WeightsStore, "collect_garbage"):
        collect_garbage(backend)
        assert_unharmed(backend)


@has_gc
def test_gridfs_delete_interrupted_between_files_and_chunks(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GridFS deletes the files document first, then the chunks: a failure in between leaves
    orphan chunks (no files document), which the checkpoint never shows and gc reclaims."""
    if backend.kind == "local":
        pytest.skip("GridFS only")
    seed(backend)
    backend.weights.put_weights(RUN, TARGET, make_weights(TARGET))
    chunks = backend.weights.bucket_chunks
    with monkeypatch.context() as mp:
        mp.setattr(chunks, "delete_many", fail_on_call(chunks.delete_many))
        backend.weights.remove(RUN, TARGET)
    assert_unharmed(backend)
    files = set(backend.root["dacapo_store.weights.files"].distinct("_id"))
    assert set(backend.root["dacapo_store.weights.chunks"].distinct("files_id")) - files, "expected orphan chunks"
    collect_garbage(backend)
    assert_unharmed(backend)
