"""Shared fixtures: a patched mongomock, fresh stores of every backend, and the real-server switch.

``backend_stores`` yields a fresh ``(WeightsStore, StatsStore)`` pair sharing one backend, for
the backends ``local``, ``mongomock`` and, when ``DACAPO_STORE_TEST_MONGODB_URI`` is set,
``mongodb`` (a fresh database per test, dropped afterwards).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from dacapo_store import LocalStatsStore, LocalWeightsStore, MongoStatsStore, MongoWeightsStore
from dacapo_store.testing.mongomock_support import mongomock_client, patch_mongomock

MONGODB_URI_ENV = "DACAPO_STORE_TEST_MONGODB_URI"
BACKENDS = ["local", "mongomock", pytest.param("mongodb", marks=pytest.mark.mongodb)]

patch_mongomock()


def real_mongodb_uri() -> str | None:
    """The real server to test against, if any."""
    return os.environ.get(MONGODB_URI_ENV) or None


requires_mongodb = pytest.mark.skipif(
    real_mongodb_uri() is None, reason=f"set {MONGODB_URI_ENV} to run against a real MongoDB"
)


def skip_unless_replica_set(uri: str) -> None:
    """Skip the calling test, saying why, unless the server at ``uri`` is a replica set member
    or a mongos (``hello`` has ``setName``, or says ``isdbgrid``): retryable writes, which the
    stores rely on to outlast a failover, need one; a standalone server has none."""
    import pymongo

    from dacapo_store.uri import redact_uri

    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        hello = client.admin.command("hello")
    finally:
        client.close()
    if not hello.get("setName") and hello.get("msg") != "isdbgrid":
        pytest.skip(f"needs a replica set (retryable writes): {redact_uri(uri)} is a standalone server")


def open_stores(backend: str, tmp_path) -> Iterator[tuple]:
    """Yield a fresh (weights, stats) pair of ``backend`` and clean up after."""
    if backend == "local":
        yield LocalWeightsStore(tmp_path / "store"), LocalStatsStore(tmp_path / "store")
    elif backend == "mongomock":
        client = mongomock_client()
        yield MongoWeightsStore(client), MongoStatsStore(client)
    elif backend == "mongodb":
        uri = real_mongodb_uri()
        if uri is None:
            pytest.skip(f"set {MONGODB_URI_ENV} to run against a real MongoDB")
        import pymongo

        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
        db_name = "dacapo_store_test_" + uuid.uuid4().hex[:12]
        try:
            yield MongoWeightsStore(client, db_name), MongoStatsStore(client, db_name)
        finally:
            client.drop_database(db_name)
            client.close()
    else:
        raise ValueError(f"unknown backend {backend!r}")


@pytest.fixture(params=BACKENDS)
def backend_stores(request, tmp_path) -> Iterator[tuple]:
    """A fresh (WeightsStore, StatsStore) pair for each backend (mongodb skipped without a URI)."""
    yield from open_stores(request.param, tmp_path)


@pytest.fixture
def weights_store(backend_stores):
    return backend_stores[0]


@pytest.fixture
def stats_store(backend_stores):
    return backend_stores[1]
