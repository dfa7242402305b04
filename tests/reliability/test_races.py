"""Many writers, readers and removers at once: 8 threads (every backend) and 4 processes (local).

Each worker stores its own checkpoints, removes some of them, lists and loads while the others
write, and races every other worker for a shared set of ``(run, iteration)`` keys. Afterwards:
exactly one writer won each shared key and its tensors are the ones stored, nothing stored is
lost, nothing removed is left, every checkpoint verifies, and storage holds no leftovers.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest

from dacapo_store import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    LocalStatsStore,
    LocalWeightsStore,
    WeightsStore,
)

from .conftest import Backend, assert_all_verify, make_weights, tag_of

RUN = "race"
SHARED_BASE = 100_000
"""Shared keys are ``SHARED_BASE + k``; a worker's own keys are ``worker * 1000 + k``."""
REMOVE_EVERY = 5


def tag(worker: int, iteration: int) -> float:
    """The value every tensor of ``worker``'s checkpoint ``iteration`` holds (exact in float32)."""
    return float(worker * 200_000 + iteration)


def work(store: WeightsStore, worker: int, own: int, shared: int) -> dict[str, Any]:
    """One worker's share: returns what it stored, removed and won."""
    stored, removed, won = [], [], []
    for k in range(own):
        iteration = worker * 1000 + k
        store.put_weights(RUN, iteration, make_weights(tag(worker, iteration), size=16))
        stored.append(iteration)
        if k % REMOVE_EVERY == REMOVE_EVERY - 1:
            store.remove(RUN, stored[-REMOVE_EVERY])
            removed.append(stored[-REMOVE_EVERY])
        if k < shared:
            try:
                store.put_weights(RUN, SHARED_BASE + k, make_weights(tag(worker, SHARED_BASE + k), size=16))
                won.append(SHARED_BASE + k)
            except CheckpointExistsError:
                pass
        listed = [info.iteration for info in store.list_checkpoints(RUN)]
        assert listed == sorted(set(listed))
        assert iteration in listed and store.latest_iteration(RUN) >= iteration
        if k % REMOVE_EVERY:
            continue  # loads are the slow part on mongomock (every chunk query scans)
        assert tag_of(store.retrieve_weights(RUN, iteration)) == tag(worker, iteration)
        for other in (listed[0], listed[-1]):  # others' checkpoints, maybe being removed
            try:
                tag_of(store.retrieve_weights(RUN, other))
            except CheckpointNotFoundError:
                pass
    return {"worker": worker, "stored": stored, "removed": removed, "won": won}


def check_outcome(store: WeightsStore, results: list[dict[str, Any]], shared: int) -> None:
    winners: dict[int, list[int]] = {}
    for result in results:
        for iteration in result["won"]:
            winners.setdefault(iteration, []).append(result["worker"])
    assert sorted(winners) == [SHARED_BASE + k for k in range(shared)]
    assert all(len(workers) == 1 for workers in winners.values()), winners
    expected = {i for r in results for i in r["stored"]} - {i for r in results for i in r["removed"]}
    expected |= set(winners)
    assert {info.iteration for info in store.list_checkpoints(RUN)} == expected
    for iteration, [worker] in winners.items():
        assert tag_of(store.retrieve_weights(RUN, iteration)) == tag(worker, iteration)
    assert assert_all_verify(store) == len(expected)
    assert store.latest_iteration(RUN) == max(expected)


@pytest.mark.slow  # eight racing threads (~11 s on mongomock)
def test_eight_threads_store_list_load_remove_and_race(backend: Backend) -> None:
    threads, own, shared = 8, 50, 10
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(index: int) -> None:
        try:
            barrier.wait()
            results.append(work(backend.weights, index, own, shared))
        except BaseException as error:  # reported below, with the thread's traceback
            errors.append(error)

    pool = [threading.Thread(target=worker, args=(index,)) for index in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors, errors
    check_outcome(backend.weights, results, shared)
    backend.assert_clean()


def process_worker(basedir: str, worker: int, own: int, shared: int, barrier: Any) -> None:
    barrier.wait()
    result = work(LocalWeightsStore(basedir), worker, own, shared)
    Path(basedir, f"result-{worker}.json").write_text(json.dumps(result))


@pytest.mark.slow  # racing processes
def test_four_processes_on_one_local_store(tmp_path: Path) -> None:
    processes, own, shared = 4, 25, 10
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    LocalStatsStore(tmp_path).delete_training_stats("nobody")  # a write: create the catalog before the race
    children = [
        context.Process(target=process_worker, args=(str(tmp_path), index, own, shared, barrier))
        for index in range(processes)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join()
    assert [child.exitcode for child in children] == [0] * processes
    results = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("result-*.json"))]
    local = Backend("local", LocalWeightsStore(tmp_path), LocalStatsStore(tmp_path), tmp_path)
    check_outcome(local.weights, results, shared)
    local.assert_clean()


def test_reader_racing_a_remove_sees_not_found_never_corrupt(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A remove that lands between a reader's catalog look-up and its payload read: the reader
    gets CheckpointNotFoundError (the checkpoint is gone), not a corruption error."""
    store = backend.weights
    store.put_weights(RUN, 1, make_weights(1))
    original_find = store._find

    def find_then_lose_race(run: str, iteration: int) -> Any:
        info = original_find(run, iteration)
        if info is not None:
            backend.reopen().remove(run, iteration)
        return info

    monkeypatch.setattr(store, "_find", find_then_lose_race)
    with pytest.raises(CheckpointNotFoundError, match="checkpoint 1 of run 'race'"):
        store.retrieve_weights(RUN, 1)
