"""Fixtures for the wire-level tests: pymongo talking MongoDB's wire protocol to a
:class:`~dacapo_store.testing.wire.WireServer` (mockupdb executing commands on mongomock).

Retries run on a :class:`~dacapo_store.testing.wire.FakeClock` (no real waits), and pymongo
re-checks a server right after an error (``quick_rediscovery``), so the tests stay fast.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dacapo_store import MongoStatsStore, MongoWeightsStore
from dacapo_store.testing.wire import FakeClock, WireServer, quick_rediscovery

DATABASE = "labdb"
SMALL_CHUNK_BYTES = 1024
"""GridFS chunk size of the test stores: a toy checkpoint spans several chunks."""


@pytest.fixture(autouse=True)
def _quick_rediscovery() -> Iterator[None]:
    with quick_rediscovery():
        yield


@pytest.fixture(scope="session")
def _shared_server() -> Iterator[WireServer]:
    with WireServer() as wire:
        yield wire


@pytest.fixture
def server(_shared_server) -> Iterator[WireServer]:
    """The wire server, empty, with a ``readWrite`` user; every client a test opened through
    :func:`open_weights` / :func:`open_stats` is closed after it. A fault the test injected
    that never fired fails it: the test did not test what it says."""
    _shared_server.reset()
    yield _shared_server
    while _clients:
        _clients.pop().close()
    unfired = _shared_server.unfired()
    assert not unfired, f"injected faults that never fired: {unfired}"


_clients: list = []


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def open_weights(server: WireServer, clock: FakeClock, **options) -> MongoWeightsStore:
    """A weights store on ``server``'s database ``labdb`` (from the URI), retrying on ``clock``;
    ``uri_options`` go into the URI."""
    uri = server.uri_with(DATABASE, **options.pop("uri_options", {}))
    options.setdefault("chunk_size_bytes", SMALL_CHUNK_BYTES)
    store = MongoWeightsStore(uri, retry=clock.policy(), **options)
    _clients.append(store.database.client)
    return store


def open_stats(server: WireServer, clock: FakeClock, **options) -> MongoStatsStore:
    """A stats store on ``server``'s database ``labdb`` (from the URI), retrying on ``clock``;
    ``uri_options`` go into the URI."""
    uri = server.uri_with(DATABASE, **options.pop("uri_options", {}))
    store = MongoStatsStore(uri, retry=clock.policy(), **options)
    _clients.append(store.database.client)
    return store


@pytest.fixture
def weights(server, clock) -> MongoWeightsStore:
    return open_weights(server, clock)


@pytest.fixture
def stats(server, clock) -> MongoStatsStore:
    return open_stats(server, clock)
