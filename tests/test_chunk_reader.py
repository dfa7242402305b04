"""Reading a GridFS payload: chunks in order from one cursor, each checked; what the store
makes of damaged chunks and lost connections."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.workloads import mongomock_find_spy
from dacapo_store import MongoWeightsStore, Weights
from dacapo_store.errors import CorruptCheckpointError
from dacapo_store.mongo.chunk_reader import checked_chunks
from dacapo_store.testing.mongomock_support import mongomock_client

FILE_ID = "payload"


def chunk_collection(payload: bytes, chunk_size: int):
    """A mongomock chunks collection holding ``payload`` as GridFS chunks of ``chunk_size``."""
    chunks = mongomock_client().get_database("test").get_collection("weights.chunks")
    documents = [
        {"files_id": FILE_ID, "n": n, "data": payload[n * chunk_size : (n + 1) * chunk_size]}
        for n in range(math.ceil(len(payload) / chunk_size))
    ]
    if documents:
        chunks.insert_many(documents)
    return chunks


def read_all(chunks, length: int, chunk_size: int) -> list[bytes]:
    return list(checked_chunks(chunks, FILE_ID, length, chunk_size, "test payload"))


@settings(max_examples=50, deadline=None)
@given(payload=st.binary(max_size=2500), chunk_size=st.integers(1, 600))
def test_every_chunk_comes_once_in_order_from_one_query(payload, chunk_size):
    chunks = chunk_collection(payload, chunk_size)
    with mongomock_find_spy() as calls:
        pieces = read_all(chunks, len(payload), chunk_size)
    assert b"".join(pieces) == payload
    assert [len(piece) for piece in pieces] == [len(payload[n : n + chunk_size]) for n in range(0, len(payload), chunk_size)]
    assert calls["weights.chunks"] == 1


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "chunk n=2 is missing"),
        ("short", "chunk n=1 has 999 bytes, expected 1000"),
        ("extra", "beyond its 5000 bytes"),
        ("not bytes", "chunk n=0 holds str, not bytes"),
    ],
)
def test_damaged_chunks_are_reported(damage, message):
    payload = bytes(range(250)) * 20
    chunks = chunk_collection(payload, 1000)
    if damage == "missing":
        chunks.delete_one({"n": 2})
    elif damage == "short":
        chunks.update_one({"n": 1}, {"$set": {"data": payload[1000:1999]}})
    elif damage == "extra":
        chunks.insert_one({"files_id": FILE_ID, "n": 5, "data": b"x"})
    else:
        chunks.update_one({"n": 0}, {"$set": {"data": "text"}})
    with pytest.raises(CorruptCheckpointError, match=message):
        read_all(chunks, len(payload), 1000)


def test_invalid_file_geometry_is_refused():
    with pytest.raises(CorruptCheckpointError, match="invalid GridFS file"):
        read_all(None, 10, 0)


class CursorLosingItsConnection:
    """Delivers the first chunk of ``cursor``, then fails as a lost connection does."""

    def __init__(self, cursor):
        self._cursor = cursor
        self._delivered = False

    def __iter__(self):
        return self

    def __next__(self):
        if self._delivered:
            raise ConnectionResetError("connection lost")
        self._delivered = True
        return next(self._cursor)

    def close(self):
        self._cursor.close()


def test_a_connection_lost_during_a_load_is_not_reported_as_corruption(monkeypatch):
    store = MongoWeightsStore(mongomock_client(), chunk_size_bytes=1000)
    store.put_weights("run", 1, Weights({"w": torch.arange(2000.0)}, None))
    real_find = type(store.bucket_chunks).find

    def find_losing_connection(self, *args, **kwargs):
        return CursorLosingItsConnection(real_find(self, *args, **kwargs))

    monkeypatch.setattr(type(store.bucket_chunks), "find", find_losing_connection)
    with pytest.raises(ConnectionResetError, match="connection lost"):
        store.retrieve_weights("run", 1)
    with pytest.raises(ConnectionResetError, match="connection lost"):
        store.verify("run", 1)


def test_loaded_tensors_are_the_callers_memory_unchanged_by_later_changes_to_the_chunks():
    store = MongoWeightsStore(mongomock_client(), chunk_size_bytes=1000)
    model = {"w": torch.arange(2000.0)}
    info = store.put_weights("run", 1, Weights(model, None))
    loaded = store.retrieve_weights("run", 1).model
    store.bucket_chunks.update_many({}, {"$set": {"data": b"\0" * 1000}})
    store.remove("run", 1)
    assert torch.equal(loaded["w"], model["w"])
    loaded["w"] += 1
    assert torch.equal(loaded["w"], model["w"] + 1)
    assert info.parts["model"].size > 2 * 1000  # several chunks
