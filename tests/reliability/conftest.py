"""Fixtures for the reliability tests: one store pair per backend, and what lies in its storage.

Every test runs on the ``local`` backend (a ``tmp_path``) and on ``mongomock``; with
``DACAPO_STORE_TEST_MONGODB_URI`` set it also runs on that real MongoDB server (in a fresh
database that is dropped afterwards).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from dacapo_store import (
    LocalStatsStore,
    LocalWeightsStore,
    MongoStatsStore,
    MongoWeightsStore,
    StatsStore,
    Weights,
    WeightsStore,
)
from dacapo_store.local.weights import PARTIAL_SUFFIX
from dacapo_store.testing.mongomock_support import mongomock_client

from ..conftest import real_mongodb_uri, requires_mongodb

SMALL_CHUNK_BYTES = 1024
"""GridFS chunk size of the test stores, so that a small checkpoint spans several chunks."""

BACKENDS = [
    "local",
    "mongomock",
    pytest.param("mongodb", marks=[pytest.mark.mongodb, requires_mongodb]),
]


@dataclass
class Backend:
    """A weights store and a stats store sharing one backend, plus raw access to its storage."""

    kind: str
    weights: WeightsStore
    stats: StatsStore
    root: Any
    """The local store directory, or the MongoDB database."""

    def reopen(self) -> WeightsStore:
        """A second weights store on the same storage (another "process" on mongomock)."""
        if self.kind == "local":
            return LocalWeightsStore(self.root)
        return MongoWeightsStore(self.root.client, self.root.name, chunk_size_bytes=SMALL_CHUNK_BYTES)

    def payloads(self) -> set[str]:
        """Every payload in storage, complete or partial, as a location (orphan chunks too)."""
        if self.kind == "local":
            return {
                path.name.removesuffix(PARTIAL_SUFFIX)
                for path in (Path(self.root) / "payloads").iterdir()
            }
        files = {str(doc["_id"]) for doc in self.root["dacapo_store.weights.files"].find({}, {"_id": 1})}
        chunks = {str(doc["files_id"]) for doc in self.root["dacapo_store.weights.chunks"].find({}, {"files_id": 1})}
        return files | chunks

    def pending(self) -> int:
        """How many catalog entries are reservations (not complete checkpoints)."""
        if self.kind == "local":
            return self.weights.catalog.query(
                "SELECT COUNT(*) AS n FROM checkpoints WHERE state != 'complete'"
            )[0]["n"]
        return self.root["dacapo_store.checkpoints"].count_documents({"state": {"$ne": "complete"}})

    def referenced(self) -> set[str]:
        """The payload locations that complete checkpoints refer to."""
        return {
            part.location
            for run in self.weights.list_runs()
            for info in self.weights.list_checkpoints(run)
            for part in info.parts.values()
        }

    def assert_clean(self) -> None:
        """Storage holds exactly the payloads of complete checkpoints and no reservation."""
        assert self.payloads() == self.referenced()
        assert self.pending() == 0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)


def make_backend(kind: str, tmp_path: Path) -> Iterator[Backend]:
    """Yield a fresh :class:`Backend` of ``kind`` (a real database is dropped afterwards)."""
    if kind == "local":
        yield Backend(kind, LocalWeightsStore(tmp_path), LocalStatsStore(tmp_path), tmp_path)
        return
    client = mongomock_client() if kind == "mongomock" else real_mongodb_uri()
    name = f"dacapo_store_test_{uuid.uuid4().hex[:12]}"
    weights = MongoWeightsStore(client, name, chunk_size_bytes=SMALL_CHUNK_BYTES)
    stats = MongoStatsStore(weights.database.client, name)
    try:
        yield Backend(kind, weights, stats, weights.database.db)
    finally:
        if kind == "mongodb":
            weights.database.client.drop_database(name)
            weights.database.client.close()


def make_weights(tag: float, size: int = 600) -> Weights:
    """Small model and optimizer state whose every value encodes ``tag`` (each part a few KB
    serialized: several chunks of :data:`SMALL_CHUNK_BYTES`)."""
    model = {"layer.weight": torch.full((size,), float(tag)), "layer.bias": torch.full((3,), float(tag))}
    moment = torch.full((size,), float(tag))
    optimizer = {
        "state": {0: {"step": torch.tensor(float(tag)), "exp_avg": moment}},
        "param_groups": [{"lr": 0.1, "params": [0]}],
    }
    return Weights(model, optimizer)


def tag_of(weights: Weights) -> float:
    """The tag a :func:`make_weights` checkpoint was made with; asserts it is consistent throughout."""
    values = torch.cat([tensor.flatten() for tensor in weights.model.values()])
    tag = float(values[0])
    assert torch.all(values == tag), "a checkpoint mixes tensors of different writers"
    assert float(weights.optimizer["state"][0]["step"]) == tag
    assert torch.all(weights.optimizer["state"][0]["exp_avg"] == tag)
    return tag


def assert_all_verify(store: WeightsStore) -> int:
    """Load every complete checkpoint of every run (a load verifies sizes and digests)
    and check its tensors; return how many."""
    count = 0
    for run in store.list_runs():
        for info in store.list_checkpoints(run):
            tag_of(store.retrieve_weights(run, info.iteration))
            count += 1
    return count
