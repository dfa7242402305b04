"""The exact commands each operation sends over the wire: names, targets, filters, sorts, index
key patterns and write concerns."""

from __future__ import annotations

import pytest
from bson import ObjectId

from dacapo_store import MongoStatsStore, MongoWeightsStore
from dacapo_store.testing.contract import ToyRun

from .conftest import DATABASE, open_stats, open_weights

MAJORITY = {"w": "majority", "j": True}
WRITES = {"insert", "update", "delete", "findandmodify", "createindexes"}


def shape(server, store) -> list[tuple[str, str]]:
    """``(command, collection without the store's prefix)`` of every command sent."""
    prefix = store.database.collection_prefix
    return [(c.name, (c.collection or "").removeprefix(prefix)) for c in server.sent()]


@pytest.fixture
def run() -> ToyRun:
    return ToyRun("r")


def test_opening_creates_the_indexes_with_their_key_patterns(server, clock) -> None:
    weights, stats = open_weights(server, clock), open_stats(server, clock)
    indexes = {
        (c.collection.removeprefix(weights.database.collection_prefix), spec["name"]): (
            list(spec["key"].items()), bool(spec.get("unique"))
        )
        for c in server.sent("createIndexes") for spec in c.body["indexes"]
    }
    assert indexes == {
        ("checkpoints", "run_iteration"): ([("run", 1), ("iteration", 1)], True),
        ("checkpoints", "run_state_iteration"): ([("run", 1), ("state", 1), ("iteration", -1)], False),
        ("validation_scores", "score_key"): (
            [("run", 1), ("dataset", 1), ("criterion", 1), ("iteration", 1), ("parameters", 1)], True
        ),
        ("validation_scores", "best_score"): (
            [("run", 1), ("dataset", 1), ("criterion", 1), ("ranked", 1), ("rank", -1), ("iteration", 1),
             ("parameters", 1)], False,
        ),
        ("training_stats", "run_iteration"): ([("run", 1), ("iteration", 1)], True),
    }
    assert {c.database for c in server.sent()} == {DATABASE}
    assert all(c.write_concern == MAJORITY for c in server.sent("createIndexes"))
    assert isinstance(stats, MongoStatsStore)


def test_store_reserves_uploads_each_part_then_commits(server, weights, run) -> None:
    weights.store_weights(run, 1)
    server.clear()
    info = weights.store_weights(run, 2)
    assert shape(server, weights) == [
        ("insert", "checkpoints"),
        ("find", "weights.files"), ("find", "weights.chunks"),  # GridFS: index check of a non-empty bucket
        ("insert", "weights.chunks"), ("insert", "weights.files"),
        ("find", "weights.files"), ("find", "weights.chunks"),
        ("insert", "weights.chunks"), ("insert", "weights.files"),
        ("findAndModify", "checkpoints"),
    ]
    [reserve] = server.sent("insert", weights.checkpoints.name)[0].body["documents"]
    assert {key: reserve[key] for key in ("run", "iteration", "state")} == {"run": "r", "iteration": 2, "state": "pending"}
    assert set(reserve["owner"]) >= {"host", "pid"}
    files = [doc for c in server.sent("insert", weights.bucket_files.name) for doc in c.body["documents"]]
    assert [str(doc["_id"]) for doc in files] == [info.parts["model"].location, info.parts["optimizer"].location]
    assert all(doc["metadata"]["token"] == reserve["token"] for doc in files)
    [commit] = server.sent("findAndModify")
    assert commit.body["query"] == {"run": "r", "iteration": 2, "token": reserve["token"], "state": "pending"}
    assert commit.body["update"]["$set"]["state"] == "complete"
    assert commit.body["new"] is True
    assert all(c.write_concern == MAJORITY for c in server.sent() if c.name.lower() in WRITES)


def test_the_first_store_into_an_empty_bucket_lets_gridfs_create_its_indexes(server, weights, run) -> None:
    server.clear()
    weights.store_weights(run, 1)
    created = {
        c.collection.removeprefix(weights.database.collection_prefix): [list(s["key"].items()) for s in c.body["indexes"]]
        for c in server.sent("createIndexes")
    }
    assert created == {
        "weights.files": [[("filename", 1), ("uploadDate", 1)]],
        "weights.chunks": [[("files_id", 1), ("n", 1)]],
    }


def test_retrieve_reads_the_catalog_then_each_part_with_one_cursor(server, weights, run) -> None:
    info = weights.store_weights(run, 1)
    server.clear()
    weights.retrieve_weights("r", 1)
    assert shape(server, weights) == [
        ("find", "checkpoints"),
        ("find", "weights.files"), ("find", "weights.chunks"),
        ("find", "weights.files"), ("find", "weights.chunks"),
    ]
    catalog, model_file, model_chunks, optimizer_file, optimizer_chunks = server.sent()
    assert catalog.body["filter"] == {"run": "r", "iteration": 1, "state": "complete"}
    assert catalog.body["limit"] == 1
    assert model_file.body["filter"] == {"_id": ObjectId(info.parts["model"].location)}
    assert model_chunks.body["filter"] == {"files_id": ObjectId(info.parts["model"].location)}
    assert model_chunks.body["sort"] == {"n": 1}
    assert optimizer_chunks.body["filter"] == {"files_id": ObjectId(info.parts["optimizer"].location)}
    assert optimizer_file.body["filter"] == {"_id": ObjectId(info.parts["optimizer"].location)}


def test_latest_is_one_indexed_query(server, weights, run) -> None:
    for iteration in (1, 3, 2):
        weights.store_weights(run, iteration)
    server.clear()
    assert weights.latest_iteration("r") == 3
    [query] = server.sent()
    assert (query.name, query.collection) == ("find", weights.checkpoints.name)
    assert query.body["filter"] == {"run": "r", "state": "complete"}
    assert query.body["sort"] == {"iteration": -1}
    assert query.body["limit"] == 1


def test_best_is_one_query_on_the_best_score_index(server, weights, stats, run) -> None:
    for iteration, value in ((1, 0.5), (2, 0.9), (3, float("nan"))):
        stats.store_validation_scores(run, iteration, "val", {"dice": value}, {"dice": True})
    server.clear()
    assert weights.retrieve_best("r", "val", "dice") == 2
    [query] = server.sent()
    assert (query.name, query.collection) == ("find", weights.scores.name)
    assert query.body["filter"] == {"run": "r", "dataset": "val", "criterion": "dice", "ranked": True}
    assert query.body["sort"] == {"rank": -1, "iteration": 1, "parameters": 1}
    assert query.body["limit"] == 1


def test_scores_go_in_one_unordered_insert(server, stats, run) -> None:
    server.clear()
    stats.store_validation_scores(run, 1, "val", {"dice": 0.5, "loss": 0.1}, {"dice": True, "loss": False})
    [insert] = server.sent()
    assert (insert.name, insert.body["ordered"], len(insert.body["documents"])) == ("insert", False, 2)
    assert insert.write_concern == MAJORITY


def test_remove_deletes_exactly_the_entry_it_read_then_the_payloads(server, weights, run) -> None:
    info = weights.store_weights(run, 1)
    server.clear()
    weights.remove("r", 1)
    assert shape(server, weights) == [
        ("find", "checkpoints"),
        ("findAndModify", "checkpoints"),
        ("delete", "weights.files"), ("delete", "weights.chunks"),
        ("delete", "weights.files"), ("delete", "weights.chunks"),
    ]
    read, unlist = server.sent()[:2]
    assert read.body["filter"] == {"run": "r", "iteration": 1, "state": "complete"}
    stored = server.database(DATABASE)[weights.checkpoints.name]
    assert stored.count_documents({}) == 0
    assert unlist.body["remove"] is True
    assert set(unlist.body["query"]) == {"_id", "token", "state", "replacement.token"}
    assert unlist.body["query"]["replacement.token"] == {"$exists": False}  # no overwrite claimed it since
    deletes = [c.body["deletes"][0] for c in server.sent("delete")]
    model = ObjectId(info.parts["model"].location)
    assert deletes[:2] == [{"q": {"_id": model}, "limit": 1}, {"q": {"files_id": model}, "limit": 0}]
    assert all(c.write_concern == MAJORITY for c in server.sent() if c.name.lower() in WRITES)


def test_the_uri_decides_write_concern_and_database(server, clock, run) -> None:
    uri_options = {"w": "1", "journal": "false", "wtimeoutMS": "2000"}
    weights = open_weights(server, clock, uri_options=uri_options)
    weights.store_weights(run, 1)
    writes = [c for c in server.sent() if c.name.lower() in WRITES]
    assert writes and all(c.write_concern == {"w": 1, "j": False, "wtimeout": 2000} for c in writes)
    assert {c.database for c in server.sent()} == {DATABASE}
    assert weights.database.db_name == DATABASE


@pytest.mark.parametrize(
    "uri_options, expected",
    [
        ({}, MAJORITY),
        ({"wtimeoutMS": "2000"}, {"w": "majority", "j": True, "wtimeout": 2000}),
        ({"w": "1"}, {"w": 1, "j": True}),
        ({"journal": "false"}, {"w": "majority", "j": False}),
    ],
)
def test_each_write_concern_field_the_uri_leaves_out_keeps_the_default(server, clock, run, uri_options, expected) -> None:
    weights = open_weights(server, clock, uri_options=uri_options)
    server.clear()
    weights.store_weights(run, 1)
    writes = [c for c in server.sent() if c.name.lower() in WRITES]
    assert writes and all(c.write_concern == expected for c in writes)


def test_the_uri_decides_read_preference_but_the_write_protocol_reads_the_primary(server, clock) -> None:
    weights = open_weights(server, clock, uri_options={"readPreference": "secondaryPreferred"})
    assert weights.checkpoints.read_preference.mongos_mode == "secondaryPreferred"
    assert weights.scores.read_preference.mongos_mode == "secondaryPreferred"
    assert weights.catalog_primary.read_preference.mongos_mode == "primary"


def test_an_explicit_database_name_wins_over_the_uri(server, clock) -> None:
    weights = MongoWeightsStore(server.uri_with(DATABASE), "other", retry=clock.policy())
    try:
        assert {c.database for c in server.sent()} == {"other"}
    finally:
        weights.database.client.close()


def test_without_a_database_in_the_uri_it_is_dacapo(server, clock) -> None:
    weights = MongoWeightsStore(server.uri_with(""), retry=clock.policy())
    try:
        assert {c.database for c in server.sent()} == {"dacapo"}
    finally:
        weights.database.client.close()
