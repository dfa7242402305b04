"""ChunkReader: any read pattern returns the file's bytes, and the digest sees each chunk once."""

from __future__ import annotations

import io
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dacapo_store.errors import CorruptCheckpointError
from dacapo_store.mongo import chunk_reader
from dacapo_store.mongo.chunk_reader import ChunkReader, DroppedChunkError
from dacapo_store.testing.mongomock_support import mongomock_client

from benchmarks.workloads import mongomock_find_spy

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


def reader_over(chunks, length: int, chunk_size: int) -> tuple[ChunkReader, list[bytes]]:
    seen: list[bytes] = []
    return ChunkReader(chunks, FILE_ID, length, chunk_size, seen.append, "test payload"), seen


reads = st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 700)), max_size=25)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.binary(max_size=2500),
    chunk_size=st.integers(1, 600),
    pattern=reads,
    read_ahead=st.integers(0, 2000),
    keep_all=st.booleans(),
)
def test_any_read_pattern_returns_the_bytes_and_hands_every_chunk_over_once_in_order(
    payload, chunk_size, pattern, read_ahead, keep_all, monkeypatch_module
):
    """Every read returns the file's bytes, or (without keep_all) refuses to go back to a chunk
    it dropped; the chunks go to on_chunk once each, in order."""
    monkeypatch_module.setattr(chunk_reader, "READ_AHEAD_BYTES", read_ahead)
    chunks = chunk_collection(payload, chunk_size)
    reader = ChunkReader(chunks, FILE_ID, len(payload), chunk_size, (seen := []).append, "test payload", keep_all)
    try:
        for position, size in pattern:
            reader.seek(position)
            data = reader.read(size)
            assert data == payload[position : position + size]
            assert reader.tell() == position + len(data)
    except DroppedChunkError as error:
        assert not keep_all
        with pytest.raises(DroppedChunkError) as again:
            reader.read_rest()
        assert again.value is error  # the first error sticks
        return
    finally:
        assert sum(map(len, reader._window.values())) <= max(read_ahead, 0) + 3 * chunk_size or keep_all

    assert reader.read_rest() == len(payload)
    assert b"".join(seen) == payload
    assert [len(chunk) for chunk in seen] == [len(payload[n : n + chunk_size]) for n in range(0, len(payload), chunk_size)]
    reader.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_torch_load_pattern_reads_the_end_with_one_query_and_the_rest_with_one_cursor(monkeypatch):
    monkeypatch.setattr(chunk_reader, "READ_AHEAD_BYTES", 1000)
    payload = bytes(range(256)) * 40  # 10,240 bytes in 10 chunks of 1,024
    chunks = chunk_collection(payload, 1024)
    reader, seen = reader_over(chunks, len(payload), 1024)
    with mongomock_find_spy() as calls:
        reader.seek(-100, io.SEEK_END)
        assert reader.read(100) == payload[-100:]  # the central directory, read first
        reader.seek(0)
        assert reader.read() == payload  # then everything from the start
        assert reader.read_rest() == len(payload)
    assert calls["weights.chunks"] == 2
    assert b"".join(seen) == payload


@pytest.mark.parametrize("read_size", [1000, 100_000])
def test_the_reader_drops_chunks_it_has_passed_even_within_one_read(monkeypatch, read_size):
    """torch reads a tensor in one read: the chunks it has copied go while it copies."""
    monkeypatch.setattr(chunk_reader, "READ_AHEAD_BYTES", 3000)
    payload = bytes(100_000)
    reader, _ = reader_over(chunk_collection(payload, 1000), len(payload), 1000)
    most = 0
    original = reader._drop_passed

    def measuring() -> None:
        nonlocal most
        original()
        most = max(most, reader._window_bytes)

    reader._drop_passed = measuring
    while reader.read(read_size):
        pass
    assert most <= 3000 + 2 * 1000


def test_a_failed_cursor_is_reported_as_itself_never_as_missing_chunks():
    class FlakyCursor:
        def __init__(self):
            self.calls = 0

        def __iter__(self):
            return self

        def __next__(self):
            self.calls += 1
            if self.calls == 1:
                return {"n": 0, "data": b"a" * 10}
            if self.calls == 2:
                raise ConnectionResetError("connection lost")
            raise StopIteration  # a dead cursor delivers nothing more

        def close(self):
            pass

    class Chunks:
        def find(self, *args, **kwargs):
            return FlakyCursor()

    reader = ChunkReader(Chunks(), FILE_ID, 30, 10, lambda chunk: None, "test payload")
    assert reader.read(10) == b"a" * 10
    with pytest.raises(ConnectionResetError) as first:
        reader.read(10)
    with pytest.raises(ConnectionResetError) as again:
        reader.read_rest()
    assert again.value is first.value


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
    reader, _ = reader_over(chunks, len(payload), 1000)
    with pytest.raises(CorruptCheckpointError, match=message):
        reader.read()
        reader.read_rest()


def test_a_chunk_read_ahead_must_equal_the_cursors_copy(monkeypatch):
    monkeypatch.setattr(chunk_reader, "READ_AHEAD_BYTES", 0)
    payload = bytes(5000)
    chunks = chunk_collection(payload, 1000)
    reader, _ = reader_over(chunks, len(payload), 1000)
    reader.seek(4500)
    reader.read(10)  # chunk 4, fetched on its own
    chunks.update_one({"n": 4}, {"$set": {"data": b"\1" * 1000}})
    reader.seek(0)
    with pytest.raises(CorruptCheckpointError, match="chunk n=4 changed while it was read"):
        reader.read()
        reader.read_rest()


def test_invalid_file_geometry_is_refused():
    with pytest.raises(CorruptCheckpointError, match="invalid GridFS file"):
        ChunkReader(None, FILE_ID, 10, 0, lambda chunk: None, "test payload")


def test_bad_seeks_and_closed_readers_are_refused():
    reader, _ = reader_over(chunk_collection(b"abc", 2), 3, 2)
    with pytest.raises(ValueError, match="invalid whence"):
        reader.seek(0, 7)
    with pytest.raises(ValueError, match="negative seek position"):
        reader.seek(-1)
    reader.close()
    with pytest.raises(ValueError):
        reader.read(1)


def test_a_store_loads_again_keeping_every_chunk_if_torch_ever_reads_out_of_order(monkeypatch, caplog):
    """Simulate a torch that reads back to dropped chunks: the reader drops everything it
    passed; the store notices, loads again keeping every chunk, and the result is verified."""
    import torch

    from dacapo_store import MongoWeightsStore, Weights

    def drop_everything_passed(self):
        if not self._keep_all:
            current = self._position // self._chunk_size
            for index in [index for index in self._window if index < current]:
                self._window_bytes -= len(self._window.pop(index))

    monkeypatch.setattr(ChunkReader, "_drop_passed", drop_everything_passed)
    store = MongoWeightsStore(mongomock_client(), chunk_size_bytes=1000)
    model = {f"w{i}": torch.full((300,), float(i)) for i in range(10)}
    store.put_weights("run", 1, Weights(model, None))
    loaded = store.retrieve_weights("run", 1).model
    assert all(torch.equal(loaded[key], model[key]) for key in model)
    assert "loading again, keeping every chunk" in caplog.text


@pytest.mark.parametrize("chunks_in_payload", [1, 2, 4, 5, 6, 9])
@pytest.mark.parametrize("optimizer", [False, True])
def test_torch_load_never_reads_back_to_a_dropped_chunk(monkeypatch, caplog, chunks_in_payload, optimizer):
    """Whatever the payload's size against the kept chunks' budget (4 chunks here), torch's
    pattern (start, end, then onwards from the start) is served without a second load."""
    import torch

    from benchmarks.workloads import adam_state, model_state
    from dacapo_store import MongoWeightsStore, Weights

    monkeypatch.setattr(chunk_reader, "READ_AHEAD_BYTES", 4 * 4096)
    store = MongoWeightsStore(mongomock_client(), chunk_size_bytes=4096)
    model = model_state(chunks_in_payload * 4096 - 1500)
    store.put_weights("run", 1, Weights(model, adam_state(model) if optimizer else None))
    with mongomock_find_spy() as calls:
        loaded = store.retrieve_weights("run", 1)
    assert "loading again" not in caplog.text
    # per part: the cursor, and the end of the archive (two chunks where it straddles a boundary)
    assert calls["dacapo_store.weights.chunks"] <= 3 * (2 if optimizer else 1)
    assert all(torch.equal(loaded.model[key], model[key]) for key in model)


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
    import torch

    from dacapo_store import MongoWeightsStore, Weights

    store = MongoWeightsStore(mongomock_client(), chunk_size_bytes=1000)
    store.put_weights("run", 1, Weights({"w": torch.arange(2000.0)}, None))
    real_open = ChunkReader._open_cursor

    def open_failing_cursor(self):
        real_open(self)
        self._cursor = CursorLosingItsConnection(self._cursor)

    monkeypatch.setattr(ChunkReader, "_open_cursor", open_failing_cursor)
    with pytest.raises(ConnectionResetError, match="connection lost"):
        store.retrieve_weights("run", 1)
    with pytest.raises(ConnectionResetError, match="connection lost"):
        store.verify("run", 1)
