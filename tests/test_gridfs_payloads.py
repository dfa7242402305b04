"""GridFSPayloads, the MongoDB backend's payload store, through the PayloadStore methods
(on mongomock; the whole store contract runs it in tests/test_contract.py and tests/wire)."""

from __future__ import annotations

import pytest
from bson import ObjectId

from dacapo_store.errors import CorruptCheckpointError
from dacapo_store.mongo.connection import MongoDatabase
from dacapo_store.mongo.payloads import GridFSPayloads
from dacapo_store.payload_store import PARTIAL_SUFFIX
from dacapo_store.testing.mongomock_support import mongomock_client


@pytest.fixture
def payloads() -> GridFSPayloads:
    return GridFSPayloads(MongoDatabase(mongomock_client(), "test"), chunk_size_bytes=1000)


def write(payloads: GridFSPayloads, data: bytes, **options) -> str:
    location = payloads.new_location()

    def produce(put) -> str:
        put(memoryview(data))
        return "produced"

    assert payloads.write(location, produce, **options) == "produced"
    return location


def test_a_written_payload_is_read_into_memory_listed_and_deleted(payloads) -> None:
    data = bytes(range(256)) * 10
    location = write(payloads, data, filename="r/1/model", metadata={"token": "t"})
    memory = bytearray(len(data))
    payloads.read_into(location, memory, "r/1/model")
    assert memory == data
    assert payloads.list() == {location: len(data)}
    assert payloads.files.find_one({"_id": ObjectId(location)})["metadata"] == {"token": "t"}
    assert payloads.delete(location) and not payloads.delete(location)
    assert payloads.list() == {}


def test_reading_a_missing_payload_or_into_memory_of_another_size_is_corruption(payloads) -> None:
    location = write(payloads, b"x" * 2500)
    with pytest.raises(CorruptCheckpointError, match="2500 bytes, not 2499"):
        payloads.read_into(location, bytearray(2499), "r/1/model")
    with pytest.raises(CorruptCheckpointError, match="missing"):
        payloads.read_into(payloads.new_location(), bytearray(1), "r/1/model")
    with pytest.raises(CorruptCheckpointError, match="invalid payload id"):
        payloads.read_into("../model", bytearray(1), "r/1/model")


def test_a_failed_write_leaves_nothing(payloads) -> None:
    location = payloads.new_location()

    def produce(put):
        put(memoryview(b"y" * 2500))
        raise RuntimeError("serialization failed")

    unaborted: list[str] = []
    with pytest.raises(RuntimeError, match="serialization failed"):
        payloads.write(location, produce, unaborted=unaborted)
    assert payloads.list() == {} and unaborted == []


def test_an_unpublished_upload_is_listed_as_partial_and_discarded(payloads) -> None:
    published = write(payloads, b"p" * 1500)
    unpublished = payloads.new_location()
    payloads.chunks.insert_one({"files_id": ObjectId(unpublished), "n": 0, "data": b"u" * 1000})
    assert payloads.list() == {published: 1500, unpublished + PARTIAL_SUFFIX: 1000}
    assert not payloads.delete(published + PARTIAL_SUFFIX), "the chunks of a published payload stay"
    payloads.discard(unpublished)
    assert payloads.list() == {published: 1500}
