"""A writer or remover process killed outright (``os._exit``) at each phase, on the local backend.

The child process shares the store directory with the test; it dies inside the phase, so
nothing of its own clean-up runs. The survivors must see no partial checkpoint and keep every
other checkpoint intact. A writer on this host that died is verifiably dead: its reservation is
taken over at once. One that seems to run on another host cannot be judged from here: its fresh
reservation is respected until it goes stale. Garbage collection reclaims everything either left.
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from pathlib import Path

import pytest

from dacapo_store import CheckpointExistsError, LocalStatsStore, LocalWeightsStore
from dacapo_store.serialization import HashingWriter

from .conftest import Backend, make_weights
from .faults import (
    KILLED_EXIT_CODE,
    RUN,
    TARGET,
    assert_unharmed,
    collect_garbage,
    fail_after_bytes,
    fail_on_call,
    kill,
    model_part_size,
    seed,
)

PHASES = {
    # phase: (operation, what dies)
    "mid-upload of the model part": ("write", "bytes:2500"),
    "between the parts": ("write", "bytes:model+10"),
    "after the payloads, before the catalog commit": ("write", "_commit"),
    "after the catalog entry is dropped, before any payload is deleted": ("remove", "_delete_payload"),
    "between the payload deletes": ("remove", "_delete_payload:2"),
}


def die_in_phase(basedir: str, phase: str, host: str | None) -> None:
    """The child: open the store (on ``host``, if given, as far as reservations tell), arm the
    fault for ``phase``, and run the operation."""
    if host is not None:
        socket.gethostname = lambda: host
    store = LocalWeightsStore(basedir)
    operation, where = PHASES[phase]
    if where.startswith("bytes:"):
        limit = where.removeprefix("bytes:")
        limit = model_part_size(store) + 10 if limit == "model+10" else int(limit)
        HashingWriter.__init__ = fail_after_bytes(limit, fault=kill)
    else:
        method, _, call = where.partition(":")
        setattr(store, method, fail_on_call(getattr(store, method), int(call or 1), fault=kill))
    if operation == "write":
        store.put_weights(RUN, TARGET, make_weights(TARGET))
    else:
        store.remove(RUN, TARGET)
    raise AssertionError("the fault did not fire")


@pytest.fixture
def local(tmp_path: Path) -> Backend:
    return Backend("local", LocalWeightsStore(tmp_path), LocalStatsStore(tmp_path), tmp_path)


def run_child(basedir: Path, phase: str, host: str | None = None) -> None:
    child = multiprocessing.get_context("fork").Process(target=die_in_phase, args=(str(basedir), phase, host))
    child.start()
    child.join()
    assert child.exitcode == KILLED_EXIT_CODE, f"the child did not die in the phase (exit {child.exitcode})"


@pytest.mark.parametrize("phase", list(PHASES))
def test_killed_process_leaves_nothing_visible(local: Backend, phase: str) -> None:
    seed(local)
    operation, _ = PHASES[phase]
    if operation == "remove":
        local.weights.put_weights(RUN, TARGET, make_weights(TARGET))
    run_child(local.root, phase)
    assert_unharmed(local)  # a killed writer: not there; a killed remove: already gone, not half
    assert local.payloads() - local.referenced() or local.pending(), "the dead process left nothing?"
    if operation == "write":  # the dead writer's reservation does not block the iteration
        local.weights.put_weights(RUN, TARGET, make_weights(TARGET))
    collect_garbage(local)
    assert_unharmed(local, target_stored=operation == "write")
    if operation == "remove":
        local.weights.put_weights(RUN, TARGET, make_weights(TARGET))
        assert_unharmed(local, target_stored=True)


@pytest.mark.parametrize("phase", [phase for phase, (operation, _) in PHASES.items() if operation == "write"])
def test_a_writer_that_cannot_be_judged_dead_keeps_its_fresh_reservation(local: Backend, phase: str) -> None:
    seed(local)
    run_child(local.root, phase, host="another-host")
    assert_unharmed(local)
    with pytest.raises(CheckpointExistsError, match="being stored by another writer"):
        local.weights.put_weights(RUN, TARGET, make_weights(99))
    collect_garbage(local)  # once stale
    local.weights.put_weights(RUN, TARGET, make_weights(TARGET))
    assert_unharmed(local, target_stored=True)


def test_gc_keeps_a_fresh_upload_of_another_host(local: Backend) -> None:
    """gc run while the dead writer's heartbeat is still fresh keeps its reservation when the
    writer seems to run on another host (a dead writer and a slow one look alike from here
    until ``older_than`` has passed)."""
    seed(local)
    run_child(local.root, "between the parts", host="another-host")
    left = (local.payloads(), local.pending())
    local.weights.collect_garbage(older_than=3600.0)
    assert (local.payloads(), local.pending()) == left
    assert_unharmed(local)


def test_gc_reclaims_a_dead_local_writer_at_once(local: Backend) -> None:
    seed(local)
    run_child(local.root, "between the parts")
    report = local.weights.collect_garbage(older_than=3600.0, now=time.time())
    assert [item.kind for item in report.items] == ["stale-reservation"]
    local.assert_clean()
    assert_unharmed(local)
