"""The whole store contract, run over MongoDB's wire protocol: pymongo's real networking,
command building and reply handling against the wire-level test server."""

from __future__ import annotations

import pytest
from bson import ObjectId

from dacapo_store.testing.contract import StoreContract

from ..test_contract import flip_byte
from .conftest import open_stats, open_weights


class TestWireBackend(StoreContract):
    @pytest.fixture
    def stores(self, server, clock):
        yield open_weights(server, clock), open_stats(server, clock)

    def flip_payload_byte(self, weights_store, location):
        chunks = weights_store.database.db[weights_store.bucket_chunks.name]
        chunk = chunks.find_one({"files_id": ObjectId(location), "n": 0})
        chunks.update_one({"_id": chunk["_id"]}, {"$set": {"data": flip_byte(bytes(chunk["data"]))}})
