"""The mongomock test server behaves as a server under threads: a unique index is never seen
broken, not even for a moment (see ``dacapo_store.testing.mongomock_support``)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest
from pymongo.errors import DuplicateKeyError

from dacapo_store.testing.mongomock_support import mongomock_client

INSERTERS = 4


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads as often as the interpreter allows, so that races show within a few trials."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("frequent_thread_switches")
@pytest.mark.parametrize("trial", range(40))
def test_racing_inserts_of_one_key_leave_one_winner_and_updates_of_it_never_fail(trial: int) -> None:
    collection = mongomock_client()["db"]["checkpoints"]
    collection.create_index([("key", 1)], unique=True)
    winners: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(INSERTERS + 1)

    def insert(writer: int) -> None:
        barrier.wait()
        try:
            collection.insert_one({"key": trial, "writer": writer})
            winners.append(writer)
        except DuplicateKeyError:
            pass

    def update() -> None:
        barrier.wait()
        try:
            for beat in range(20):
                collection.update_one({"key": trial}, {"$set": {"beat": beat}})
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=insert, args=(writer,)) for writer in range(INSERTERS)]
    threads.append(threading.Thread(target=update))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(winners) == 1
    [stored] = list(collection.find({"key": trial}))
    assert stored["writer"] == winners[0]
