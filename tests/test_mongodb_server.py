"""What only a real MongoDB shows (``DACAPO_STORE_TEST_MONGODB_URI``): a primary stepping down
in the middle of a store, outlasted by retryable writes, and a ``writeConcernError`` from the
server itself. Faults come from the server's ``failCommand`` fail point, which needs a server
started with ``--setParameter enableTestCommands=1`` (the CI workflow starts one); each test
skips with the reason when the server lacks what it needs. Without a server the same tests run
over the wire harness, which emulates the fail point.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pymongo
import pytest
from pymongo.errors import OperationFailure

from dacapo_store import MongoWeightsStore, WriteConcernFailedError
from dacapo_store.testing.contract import ToyRun, assert_state_equal

from dacapo_store.testing.wire import WireServer, quick_rediscovery

from .conftest import real_mongodb_uri, requires_mongodb, skip_unless_replica_set

NOT_WRITABLE_PRIMARY = 10107
WRITE_CONCERN_FAILED = 64

FailPoint = Callable[[dict[str, Any], int], None]


@pytest.fixture(scope="module", params=["wire", pytest.param("mongodb", marks=[pytest.mark.mongodb, requires_mongodb])])
def uri(request: pytest.FixtureRequest) -> Iterator[str]:
    """The real server's URI, or a wire harness's (a replica set primary)."""
    if request.param == "mongodb":
        yield real_mongodb_uri()
        return
    with quick_rediscovery(), WireServer() as server:
        yield server.uri_with()


@pytest.fixture
def weights(uri: str) -> Iterator[MongoWeightsStore]:
    """A weights store in a fresh database (dropped afterwards), small chunks."""
    store = MongoWeightsStore(uri, f"dacapo_store_test_{uuid.uuid4().hex[:12]}", chunk_size_bytes=1024)
    try:
        yield store
    finally:
        store.database.client.drop_database(store.database.db_name)
        store.database.client.close()


@pytest.fixture
def fail_point(uri: str) -> Iterator[FailPoint]:
    """``fail_point(data, times)``: arm the server's ``failCommand`` fail point (skips the test
    if the server refuses it). After the test the fail point is off, and the test fails unless
    the server entered it ``times`` times: a fault that never fired tested nothing."""
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    armed: list[int] = []

    def arm(data: dict[str, Any], times: int) -> None:
        try:
            reply = client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": times}, "data": data})
        except OperationFailure as error:
            pytest.skip(f"the server refuses the failCommand fail point ({error}); start it with "
                        "--setParameter enableTestCommands=1")
        armed.append(int(reply.get("count", 0)) + times)

    try:
        yield arm
        for entered in armed:  # waitForFailPoint: MongoDB 4.4+
            client.admin.command({"waitForFailPoint": "failCommand", "timesEntered": entered, "maxTimeMS": 5000})
    finally:
        if armed:
            client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        client.close()


@pytest.fixture
def run() -> ToyRun:
    run = ToyRun("r")
    run.train_steps()
    return run


def test_a_primary_stepping_down_mid_store_is_outlasted(uri, weights, fail_point, run) -> None:
    skip_unless_replica_set(uri)
    fail_point({"failCommands": ["insert"], "errorCode": NOT_WRITABLE_PRIMARY}, 2)
    info = weights.store_weights(run, 1)
    assert weights.list_checkpoints("r") == [info]
    assert_state_equal(weights.retrieve_weights("r", 1).model, run.model.state_dict())
    assert weights.verify("r", 1) == info


def test_a_write_concern_error_on_the_commit_fails_the_store_and_leaves_nothing(weights, fail_point, run) -> None:
    error = {"code": WRITE_CONCERN_FAILED, "codeName": "WriteConcernFailed",
             "errmsg": "waiting for replication timed out", "errInfo": {"wtimeout": True}}
    fail_point({"failCommands": ["findAndModify"], "writeConcernError": error}, 1)
    with pytest.raises(WriteConcernFailedError, match="committing checkpoint 1 of run 'r'") as caught:
        weights.store_weights(run, 1)
    assert not caught.value.commit_may_survive
    assert weights.list_checkpoints("r") == []
    db = weights.database.db
    assert db[weights.bucket_files.name].count_documents({}) == 0
    assert db[weights.checkpoints.name].count_documents({}) == 0
