"""Performance properties that can be asserted without timing: queries, bytes read, memory.

Throughput itself is measured by ``python -m benchmarks``, never here.
"""

from __future__ import annotations

import math
import tracemalloc

import gridfs
import pytest
import torch

from benchmarks.workloads import (
    adam_state,
    model_state,
    mongomock_find_spy,
    queries_in,
    sqlite_statement_spy,
)
from dacapo_store import MongoWeightsStore, Weights
from dacapo_store.mongo import chunk_reader
from dacapo_store.mongo.weights import CHUNK_SIZE_BYTES
from dacapo_store.stats_store import score_rows
from dacapo_store.testing.mongomock_support import mongomock_client

from ..conftest import open_stores

BACKENDS = ["local", "mongomock"]
MODEL_BYTES = 2_000_000


@pytest.fixture(params=BACKENDS)
def stores(request, tmp_path):
    yield from open_stores(request.param, tmp_path)


def _queries(weights, action) -> int:
    """Queries ``action`` sends: SELECTs on the local catalog, ``find``s on mongomock."""
    if isinstance(weights, MongoWeightsStore):
        with mongomock_find_spy() as calls:
            action()
        return sum(calls.values())
    with sqlite_statement_spy(weights.catalog) as statements:
        action()
    return len(queries_in(statements))


def _payload_parts_read(weights, action) -> list[str]:
    read: list[str] = []
    original = weights._load_part

    def spy(info, part, map_location):
        read.append(part)
        return original(info, part, map_location)

    weights._load_part = spy
    try:
        action()
    finally:
        del weights._load_part
    return read


@pytest.mark.parametrize("score_count", [10, 400])
def test_best_and_latest_are_one_query_whatever_the_counts(stores, score_count):
    weights, stats = stores
    rows = []
    for index in range(score_count):
        iteration, parameter = divmod(index, 50)
        rows += score_rows("run", iteration, "ds", {"f1": float(index % 97)}, {"f1": True}, {"p": parameter})
    stats._put_scores(rows)
    for iteration in range(1, 6):
        weights.put_weights("run", iteration, Weights({"w": torch.zeros(2)}, None))

    assert _queries(weights, lambda: weights.retrieve_best("run", "ds", "f1")) == 1
    assert _queries(weights, lambda: weights.latest_iteration("run")) == 1
    assert weights.latest_iteration("run") == 5


def test_model_only_retrieval_reads_only_the_model_part(stores):
    weights, _ = stores
    model = model_state(MODEL_BYTES)
    info = weights.put_weights("run", 1, Weights(model, adam_state(model)))
    assert info.parts["optimizer"].size > 1.9 * info.parts["model"].size

    read = _payload_parts_read(weights, lambda: weights.retrieve_weights("run", 1, optimizer=False))

    assert read == ["model"]
    assert info.parts["model"].size <= 1.1 * sum(t.numel() * 4 for t in model.values())
    loaded = weights.retrieve_weights("run", 1, optimizer=False)
    assert loaded.optimizer is None
    assert all(torch.equal(loaded.model[key], model[key]) for key in model)


@pytest.mark.parametrize("read_ahead, queries", [(chunk_reader.READ_AHEAD_BYTES, 1), (512 * 1024, 2)])
def test_mongo_load_uses_one_chunk_cursor_within_the_query_budget(monkeypatch, read_ahead, queries):
    """The archive's end, read first, comes with the cursor when it is near (small payloads),
    or with one query of its own when it is far (read-ahead shrunk to show it)."""
    monkeypatch.setattr(chunk_reader, "READ_AHEAD_BYTES", read_ahead)
    weights = MongoWeightsStore(mongomock_client(), chunk_size_bytes=256 * 1024)
    model = model_state(3_000_000)
    info = weights.put_weights("run", 1, Weights(model, None))
    assert info.size > 10 * 256 * 1024  # many chunks

    with mongomock_find_spy() as calls:
        loaded = weights.retrieve_weights("run", 1)

    assert calls["dacapo_store.weights.chunks"] <= math.ceil(info.size / (16 * 1024 * 1024)) + 3
    assert calls["dacapo_store.weights.chunks"] == queries
    assert all(torch.equal(loaded.model[key], model[key]) for key in model)


def test_default_chunks_fill_a_16_mib_reply_batch_and_stay_well_under_the_document_limit():
    assert 4 * (CHUNK_SIZE_BYTES + 1024) <= 16 * 1024 * 1024
    assert CHUNK_SIZE_BYTES >= 1024 * 1024


def test_mongo_store_writes_few_large_chunks():
    client = mongomock_client()
    weights = MongoWeightsStore(client)
    info = weights.put_weights("run", 1, Weights(model_state(9_000_000), None))
    chunks = client.get_database("dacapo").get_collection("dacapo_store.weights.chunks")
    assert chunks.count_documents({}) == math.ceil(info.size / CHUNK_SIZE_BYTES)
    assert gridfs.GridFSBucket(client.get_database("dacapo"), "dacapo_store.weights").find({}).next().length == info.size


def test_storing_needs_bounded_transient_python_memory(stores):
    weights, _ = stores
    model = model_state(16_000_000)
    tracemalloc.start()
    try:
        info = weights.put_weights("run", 1, Weights(model, None))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    retained_by_mongomock = info.size if isinstance(weights, MongoWeightsStore) else 0
    assert peak - retained_by_mongomock <= 100 * 1024 * 1024
    assert peak - retained_by_mongomock < info.size  # streamed, never buffered as a whole


def test_mongo_loading_holds_a_few_chunks_never_the_whole_payload():
    weights = MongoWeightsStore(mongomock_client(), chunk_size_bytes=256 * 1024)
    model = model_state(12_000_000)
    info = weights.put_weights("run", 1, Weights(model, None))
    tracemalloc.start()
    try:
        loaded = weights.retrieve_weights("run", 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # torch copies each record from the chunks straight into its tensor: Python holds a few chunks
    assert peak <= 0.25 * info.size
    assert all(torch.equal(loaded.model[key], model[key]) for key in model)
