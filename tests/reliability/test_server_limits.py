"""What mongomock allows but a real MongoDB rejects: documents over 16 MiB, invalid index specs,
transactions around GridFS; and client settings a replica set needs (retryable writes,
w="majority"). With ``DACAPO_STORE_TEST_MONGODB_URI`` set, the same run against the server."""

from __future__ import annotations

import bson
import pytest

from dacapo_store.checks import MAX_NAME_LENGTH, MAX_PARAMETERS_JSON_BYTES
from dacapo_store.mongo.connection import MongoDatabase
from dacapo_store.mongo.scores import SCORE_INDEXES
from dacapo_store.mongo.stats import TRAINING_STATS_INDEXES
from dacapo_store.mongo.weights import CHECKPOINT_INDEXES
from dacapo_store.records import TrainingIterationStats

from .conftest import Backend, make_weights

MAX_BSON_BYTES = 16 * 1024 * 1024


@pytest.fixture
def mongo(backend: Backend) -> Backend:
    if backend.kind == "local":
        pytest.skip("MongoDB only")
    return backend


def test_no_stored_document_can_reach_16_mib(mongo: Backend) -> None:
    """The largest inputs the checks allow still make documents far below the server limit."""
    name = "r" * MAX_NAME_LENGTH
    parameters = {"p": "x" * (MAX_PARAMETERS_JSON_BYTES - 16)}
    mongo.weights.put_weights(name, 2**63 - 1, make_weights(1))
    mongo.stats.store_validation_scores(
        name, 1, "d" * MAX_NAME_LENGTH, {"c" * MAX_NAME_LENGTH: 0.5}, {"c" * MAX_NAME_LENGTH: True}, parameters
    )
    mongo.stats.store_training_stats(name, [TrainingIterationStats(1, 0.5, 1.0)])
    sizes = {
        collection: max(len(bson.encode(doc)) for doc in mongo.root[collection].find())
        for collection in mongo.root.list_collection_names()
    }
    ours = {f"dacapo_store.{name}" for name in ("checkpoints", "validation_scores", "training_stats", "weights.files", "weights.chunks")}
    assert set(sizes) >= ours
    assert max(sizes.values()) < MAX_BSON_BYTES
    assert sizes["dacapo_store.checkpoints"] < 16 * 1024 and sizes["dacapo_store.validation_scores"] < 80 * 1024, sizes


def test_index_specs_are_valid_for_a_server() -> None:
    for specs in (CHECKPOINT_INDEXES, SCORE_INDEXES, TRAINING_STATS_INDEXES):
        names = [options["name"] for _, options in specs]
        assert len(names) == len(set(names))
        for keys, options in specs:
            fields = [field for field, _ in keys]
            assert len(fields) == len(set(fields)) and 0 < len(fields) <= 32
            assert all(direction in (1, -1) for _, direction in keys)
            assert all(not field.startswith("$") for field in fields)
            assert set(options) <= {"name", "unique", "partialFilterExpression", "sparse"}


def test_no_session_or_transaction_is_used(mongo: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """GridFS cannot run in a multi-document transaction: the stores never open a session."""
    client = mongo.weights.database.client

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the store started a session")

    monkeypatch.setattr(type(client), "start_session", refuse)
    mongo.weights.put_weights("r", 1, make_weights(1))
    mongo.stats.store_validation_scores("r", 1, "d", {"c": 0.5}, {"c": True})
    assert mongo.weights.retrieve_best("r", "d", "c") == 1
    mongo.weights.retrieve_weights("r", 1)
    mongo.weights.remove("r", 1)


def test_every_write_path_is_majority_and_retryable() -> None:
    database = MongoDatabase("mongodb://trainer:s3cret@127.0.0.1:1/lab?serverSelectionTimeoutMS=300", "lab")
    try:
        options = database.client.options
        assert options.retry_writes and options.retry_reads
        assert options.server_selection_timeout <= 5
        assert database.collection("any").write_concern.document == {"w": "majority", "j": True}
    finally:
        database.client.close()


def test_gridfs_bucket_writes_with_majority(mongo: Backend) -> None:
    bucket = mongo.weights.bucket
    for collection in (bucket._files, bucket._chunks):
        assert collection.write_concern.document == {"w": "majority", "j": True}
