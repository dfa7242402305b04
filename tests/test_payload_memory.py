"""The memory loads read payloads into: reused by the next load only once no tensor uses it, and
given back to the system after a while."""

from __future__ import annotations

import gc
import os

import pytest
import torch

from dacapo_store import LocalWeightsStore, MongoWeightsStore, Weights, payload_memory, release_spare_memory
from dacapo_store.testing.mongomock_support import mongomock_client

BIG = 700_000  # float32 elements: 2.8 MB, above payload_memory.REUSED_FROM_BYTES
REAL_START_REAPER = payload_memory._start_reaper


@pytest.fixture(autouse=True)
def no_spares_around(monkeypatch):
    """Each test starts without spares, and no real reaper timer fires during it."""
    started: list[float] = []
    monkeypatch.setattr(payload_memory, "_start_reaper", lambda delay: started.append(delay))
    release_spare_memory()
    yield started
    release_spare_memory()


def _spare_count() -> int:
    gc.collect()
    return sum(len(spares) for spares in payload_memory._spares.values())


@pytest.fixture(params=["local", "mongomock"])
def store(request, tmp_path):
    return LocalWeightsStore(tmp_path) if request.param == "local" else MongoWeightsStore(mongomock_client())


def _model(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((BIG,), value), "step": torch.tensor(int(value))}


def test_a_load_never_reuses_memory_that_tensors_of_an_earlier_load_still_use(store) -> None:
    for iteration in (1, 2):
        store.put_weights("r", iteration, Weights(_model(float(iteration)), None))
    first = store.retrieve_weights("r", 1).model
    kept = first["w"][10:20]  # a view is enough to keep the memory
    del first
    assert _spare_count() == 0
    second = store.retrieve_weights("r", 2).model
    assert torch.equal(kept, torch.full((10,), 1.0))
    assert torch.equal(second["w"], torch.full((BIG,), 2.0))


def test_memory_freed_by_a_load_serves_the_next_load_of_the_same_size(store) -> None:
    for iteration in (1, 2):
        store.put_weights("r", iteration, Weights(_model(float(iteration)), None))
    first = store.retrieve_weights("r", 1).model
    address = first["w"].untyped_storage().data_ptr()
    del first
    assert _spare_count() == 1
    second = store.retrieve_weights("r", 2).model  # read over the first load's bytes
    assert _spare_count() == 0
    assert second["w"].untyped_storage().data_ptr() == address
    assert torch.equal(second["w"], torch.full((BIG,), 2.0)) and int(second["step"]) == 2


def test_small_payloads_leave_no_spare(store) -> None:
    store.put_weights("r", 1, Weights({"w": torch.ones(1000)}, None))
    store.retrieve_weights("r", 1)
    assert _spare_count() == 0


def test_spares_go_back_to_the_system_once_they_are_spare_seconds_old(monkeypatch, no_spares_around) -> None:
    clock = [1000.0]
    monkeypatch.setattr(payload_memory.time, "monotonic", lambda: clock[0])
    older = payload_memory.payload_memory(3 * payload_memory.HUGE_PAGE_BYTES)
    del older
    assert _spare_count() == 1 and no_spares_around == [payload_memory.SPARE_SECONDS]
    clock[0] += payload_memory.SPARE_SECONDS / 2
    younger = payload_memory.payload_memory(5 * payload_memory.HUGE_PAGE_BYTES)
    del younger
    assert _spare_count() == 2
    clock[0] += payload_memory.SPARE_SECONDS / 2
    payload_memory._reap()
    assert list(payload_memory._spares) == [5 * payload_memory.HUGE_PAGE_BYTES]  # the older one went
    assert no_spares_around[-1] == pytest.approx(payload_memory.SPARE_SECONDS / 2)  # for the younger one
    clock[0] += payload_memory.SPARE_SECONDS
    payload_memory._reap()
    assert _spare_count() == 0


def test_release_spare_memory_gives_every_spare_back_and_says_how_much() -> None:
    for pages in (2, 2, 4):
        memory = payload_memory.payload_memory(pages * payload_memory.HUGE_PAGE_BYTES - 5)
        del memory
    # each freed before the next was asked for: the second reused the first's
    assert release_spare_memory() == 6 * payload_memory.HUGE_PAGE_BYTES
    assert _spare_count() == 0


def test_payload_memory_is_exactly_the_size_asked_for_and_writable() -> None:
    size = payload_memory.HUGE_PAGE_BYTES + 3
    memory = payload_memory.payload_memory(size)
    memory[-3:] = b"abc"
    assert len(memory) == size and bytes(memory[-3:]) == b"abc" and not memory.readonly


def test_a_spare_is_given_back_rather_than_waited_for_when_the_lock_is_taken() -> None:
    """The finalizer may run inside this module's locked section (a garbage collection there)."""
    memory = payload_memory.private_memory(payload_memory.HUGE_PAGE_BYTES)
    with payload_memory._lock:
        payload_memory._keep_spare(memory)  # returns at once: no deadlock
    assert _spare_count() == 0


def test_the_reaper_is_a_daemon_thread() -> None:
    """A timer that is not a daemon would hold up the interpreter's exit for SPARE_SECONDS."""
    reaper = REAL_START_REAPER(3600.0)
    try:
        assert reaper.daemon and reaper.is_alive()
    finally:
        reaper.cancel()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_without_spares() -> None:
    memory = payload_memory.payload_memory(payload_memory.HUGE_PAGE_BYTES)
    del memory
    assert _spare_count() == 1
    child = os.fork()
    if child == 0:
        os._exit(0 if not payload_memory._spares and not payload_memory._lock.locked() else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_memory_that_a_view_made_from_the_returned_one_points_into_is_never_reused() -> None:
    """A slice or cast of the returned memoryview does not keep it alive, yet points into it."""
    returned = payload_memory.payload_memory(payload_memory.HUGE_PAGE_BYTES)
    returned[:4] = b"keep"
    derived = returned[:4]
    del returned
    assert _spare_count() == 0  # given back, not kept
    reused = payload_memory.payload_memory(payload_memory.HUGE_PAGE_BYTES)
    reused[:4] = b"next"
    assert bytes(derived) == b"keep"
