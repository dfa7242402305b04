"""MongoDB-backend rules beyond the shared contract: indexes, write concern, query counts,
redaction, and the catalog's unique key deciding before any upload."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from dacapo_store import (
    CheckpointExistsError,
    CorruptCheckpointError,
    MongoStatsStore,
    MongoWeightsStore,
    StoreConnectionError,
    TrainingIterationStats,
)
from dacapo_store.cli import main
from dacapo_store.mongo.connection import MongoDatabase
from dacapo_store.owner import upload_ended
from dacapo_store.testing.contract import ToyRun
from dacapo_store.uri import redact_uri
from dacapo_store.weights_store import Reservation
from dacapo_store.testing.mongomock_support import mongomock_client


class CallCounter:
    """Wraps a collection and counts calls of its query methods."""

    def __init__(self, collection) -> None:
        self._collection = collection
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name):
        attribute = getattr(self._collection, name)
        if name in {"find", "find_one", "aggregate", "count_documents", "distinct"}:
            def counted(*args, **kwargs):
                self.calls.append((name, args, kwargs))
                return attribute(*args, **kwargs)
            return counted
        return attribute


@pytest.fixture
def client():
    return mongomock_client()


def test_indexes_exist_and_creation_is_idempotent(client) -> None:
    for _ in range(2):
        MongoWeightsStore(client)
        MongoStatsStore(client)
    db = client["dacapo"]
    checkpoint_indexes = db["dacapo_store.checkpoints"].index_information()
    assert checkpoint_indexes["run_iteration"]["unique"]
    assert checkpoint_indexes["run_iteration"]["key"] == [("run", 1), ("iteration", 1)]
    score_indexes = db["dacapo_store.validation_scores"].index_information()
    assert score_indexes["score_key"]["unique"]
    assert [k for k, _ in score_indexes["best_score"]["key"]][:4] == ["run", "dataset", "criterion", "ranked"]


def test_writes_use_majority_journaled_write_concern(client) -> None:
    weights, stats = MongoWeightsStore(client), MongoStatsStore(client)
    for collection in (weights.checkpoints, weights.scores, stats.training_stats, stats.scores):
        assert collection.write_concern.document == {"w": "majority", "j": True}


def test_latest_and_best_are_one_query_each(client) -> None:
    weights, stats = MongoWeightsStore(client), MongoStatsStore(client)
    run = ToyRun("r")
    for iteration in range(5):
        weights.store_weights(run, iteration)
        stats.store_validation_scores(run, iteration, "d", {"c": float(iteration % 3)}, {"c": True})
    weights.checkpoints = CallCounter(weights.checkpoints)
    weights.scores = CallCounter(weights.scores)
    assert weights.latest_iteration("r") == 4
    assert weights.retrieve_best("r", "d", "c") == 2
    assert [name for name, _, _ in weights.checkpoints.calls] == ["find_one"]
    [(name, args, kwargs)] = weights.scores.calls
    assert name == "find_one" and kwargs["sort"][0] == ("rank", -1)


def test_existing_checkpoint_fails_before_uploading_anything(client) -> None:
    weights = MongoWeightsStore(client)
    run = ToyRun("r")
    weights.store_weights(run, 1)
    files, chunks = client["dacapo"]["dacapo_store.weights.files"], client["dacapo"]["dacapo_store.weights.chunks"]
    before = (files.count_documents({}), chunks.count_documents({}))
    uploads = []
    real_open = weights.bucket.open_upload_stream_with_id
    weights.bucket.open_upload_stream_with_id = lambda *a, **k: uploads.append(a) or real_open(*a, **k)
    with pytest.raises(CheckpointExistsError):
        weights.store_weights(run, 1)
    assert uploads == []
    assert (files.count_documents({}), chunks.count_documents({})) == before


def test_unreachable_server_fails_fast_without_showing_the_password() -> None:
    uri = "mongodb://trainer:s3cret-pw@127.0.0.1:1/?serverSelectionTimeoutMS=300"
    started = time.monotonic()
    with pytest.raises(StoreConnectionError) as caught:
        MongoWeightsStore(uri)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "s3cret-pw" not in message and "trainer:***@127.0.0.1:1" in message


@pytest.mark.parametrize("password", ["s3cret-pw", "p%40ss%3Aw0rd"])
def test_an_unreachable_server_is_said_first_with_the_uri_and_pymongo_s_words_after(password) -> None:
    uri = f"mongodb://trainer:{password}@127.0.0.1:9/lab?serverSelectionTimeoutMS=200"
    with pytest.raises(StoreConnectionError) as caught:
        MongoWeightsStore(uri)
    message = str(caught.value)
    lead = "cannot reach MongoDB at mongodb://trainer:***@127.0.0.1:9/lab?serverSelectionTimeoutMS=200 (database 'lab'): "
    assert message.startswith(lead + "connection refused: nothing listens there; check the host, the port")
    assert "(waited 0.2 s). While creating indexes on dacapo_store.checkpoints: " in message
    assert message.index("[Errno 111] Connection refused") > message.index("While creating indexes")
    result = CliRunner().invoke(main, ["runs", "--store", uri])
    assert result.exit_code == 1 and ("error: " + lead) in result.output
    for shown in (message, repr(caught.value), result.output):
        assert password not in shown and "s3cret" not in shown and "ss%3Aw0rd" not in shown


def test_displayed_uri_redacts_the_password() -> None:
    database = MongoDatabase("mongodb://trainer:s3cret-pw@127.0.0.1:1/?serverSelectionTimeoutMS=300", "lab")
    assert database.display == "mongodb://trainer:***@127.0.0.1:1/?serverSelectionTimeoutMS=300"
    assert redact_uri("mongodb+srv://a:b@c/d") == "mongodb+srv://a:***@c/d"
    assert redact_uri("mongodb://host/db") == "mongodb://host/db"


def test_a_catalog_entry_with_an_invalid_payload_id_is_reported_as_corrupt(client) -> None:
    weights = MongoWeightsStore(client)
    weights.store_weights(ToyRun("r"), 1)
    weights.checkpoints.update_one({"run": "r"}, {"$set": {"parts.model.location": "not-an-id"}})
    with pytest.raises(CorruptCheckpointError, match="invalid payload id"):
        weights.retrieve_weights("r", 1)


def test_our_collections_carry_a_prefix_and_leave_dacapos_alone(client) -> None:
    from dacapo_store.experiments.config_store import MongoRunConfigStore

    db = client["dacapo"]
    dacapo_owned = {"runs": {"name": "dacapo-run"}, "training_stats": {"run_name": "x"}, "validation_scores": {"run_name": "x"}}
    for name, document in dacapo_owned.items():
        db[name].insert_one(dict(document))
    weights, stats = MongoWeightsStore(client), MongoStatsStore(client)
    MongoRunConfigStore(client).store_run_config({"name": "r", "x": 1})
    run = ToyRun("r")
    weights.store_weights(run, 1)
    stats.store_validation_scores(run, 1, "d", {"c": 1.0}, {"c": True})
    stats.store_training_stats(run, [TrainingIterationStats(0, 0.5, 1.0)])
    ours = {name for name in db.list_collection_names() if name.startswith("dacapo_store.")}
    assert ours == {
        "dacapo_store.checkpoints", "dacapo_store.validation_scores", "dacapo_store.training_stats",
        "dacapo_store.runs", "dacapo_store.weights.files", "dacapo_store.weights.chunks",
    }
    for name, document in dacapo_owned.items():
        assert [{k: v for k, v in d.items() if k != "_id"} for d in db[name].find()] == [document]
        assert list(db[name].index_information()) == ["_id_"]


def test_a_prefix_isolates_stores_in_one_database(client) -> None:
    first, second = MongoWeightsStore(client, collection_prefix="lab_a."), MongoWeightsStore(client, collection_prefix="")
    first.store_weights(ToyRun("r"), 1)
    assert second.list_runs() == [] and first.list_runs() == ["r"]
    assert "checkpoints" in client["dacapo"].list_collection_names()  # "" is the 0.2 layout
    assert first.retrieve_weights("r", 1).model


@pytest.mark.parametrize("prefix, error", [("$x.", ValueError), ("system.", ValueError), (".a", ValueError),
                                           ("a" * 65, ValueError), ("a\x00", ValueError), (None, TypeError)])
def test_an_invalid_prefix_is_refused(client, prefix, error) -> None:
    with pytest.raises(error, match="collection_prefix"):
        MongoWeightsStore(client, collection_prefix=prefix)


def test_a_remove_reads_again_when_an_overwrite_claims_the_checkpoint_after_its_read(client, monkeypatch) -> None:
    """The catalog entry is read, then unlisted: a replacement claim put on it in between is
    not deleted with it (the overwrite is live), it becomes that upload's pending reservation."""
    store = MongoWeightsStore(client)
    store.store_weights(ToyRun("r"), 1)
    claim, real_read = Reservation.new("r", 1), store.database.read

    def read_then_claimed(what, operation):
        result = real_read(what, operation)
        if what.startswith("looking up") and claim.replaces is None:
            store._reserve(claim, replace=True)
        return result

    monkeypatch.setattr(store.database, "read", read_then_claimed)
    try:
        store.remove("r", 1)
        entry = store.checkpoints.find_one({"run": "r", "iteration": 1})
        assert (entry["state"], entry["token"], "replacement" in entry) == ("pending", claim.token, False)
        assert store.list_checkpoints("r") == []
    finally:
        upload_ended(claim.token)
