"""The store contract suite, run against every backend."""

from __future__ import annotations

import pytest
from bson import ObjectId

from dacapo_store import LocalStatsStore, LocalWeightsStore
from dacapo_store.testing.contract import StoreContract
from dacapo_store.testing.memory_payloads import MemoryPayloads

from .conftest import open_stores, requires_mongodb


def flip_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


class TestLocalBackend(StoreContract):
    @pytest.fixture
    def stores(self, tmp_path):
        yield from open_stores("local", tmp_path)

    def flip_payload_byte(self, weights_store, location):
        path = weights_store.payload_path(location)
        path.write_bytes(flip_byte(path.read_bytes()))


class TestLocalCatalogWithMemoryPayloads(StoreContract):
    """The local SQLite catalog with the second payload store (in memory): a payload store is
    one module that passes the whole contract."""

    @pytest.fixture
    def stores(self, tmp_path):
        yield (
            LocalWeightsStore(tmp_path / "store", payloads=MemoryPayloads()),
            LocalStatsStore(tmp_path / "store"),
        )

    def flip_payload_byte(self, weights_store, location):
        weights_store.payloads.blobs[location] = flip_byte(weights_store.payloads.blobs[location])


class MongoPayloads:
    def flip_payload_byte(self, weights_store, location):
        chunks = weights_store.database.collection("weights.chunks")
        chunk = chunks.find_one({"files_id": ObjectId(location), "n": 0})
        chunks.update_one({"_id": chunk["_id"]}, {"$set": {"data": flip_byte(bytes(chunk["data"]))}})


class TestMongomockBackend(MongoPayloads, StoreContract):
    @pytest.fixture
    def stores(self, tmp_path):
        yield from open_stores("mongomock", tmp_path)


@requires_mongodb
@pytest.mark.mongodb
class TestMongoDBBackend(MongoPayloads, StoreContract):
    @pytest.fixture
    def stores(self, tmp_path):
        yield from open_stores("mongodb", tmp_path)
