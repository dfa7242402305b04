"""Streaming a state dict into a sink: what the sink receives, and the digest of it."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch
import xxhash

from dacapo_store import serialization
from dacapo_store.payload_memory import private_memory
from dacapo_store.serialization import (
    GATHER_BYTES,
    PAYLOAD_FORMAT_VARIABLE,
    PAYLOAD_FORMATS,
    HashingWriter,
    load_state_from_memory,
    serialize_state,
)


@pytest.mark.parametrize("payload_format", PAYLOAD_FORMATS)
def test_many_small_tensors_reach_the_sink_in_few_large_pieces_and_hash_as_written(monkeypatch, payload_format) -> None:
    monkeypatch.setenv(PAYLOAD_FORMAT_VARIABLE, payload_format)
    state = {f"p{i}": torch.full((10,), float(i)) for i in range(3000)}
    pieces: list[bytes] = []
    info = serialize_state(state, lambda view: pieces.append(bytes(view)), "here")
    payload = b"".join(pieces)
    assert (info.size, info.digest) == (len(payload), "xxh3-128:" + xxhash.xxh3_128(payload).hexdigest())
    assert len(pieces) <= len(payload) // GATHER_BYTES + 2  # not a few per tensor
    memory = private_memory(len(payload))
    memory[:] = payload
    assert torch.equal(load_state_from_memory(memory, None, "here")["p2999"], state["p2999"])


def test_large_writes_reach_the_sink_in_slices_hashed_in_order() -> None:
    received: list[bytes] = []
    writer = HashingWriter(lambda view: received.append(bytes(view)), slice_bytes=1000)
    data = bytes(range(256)) * 10
    assert writer.write(memoryview(data)) == len(data)
    assert [len(piece) for piece in received] == [1000, 1000, 560]
    assert b"".join(received) == data
    assert writer.digest() == "xxh3-128:" + xxhash.xxh3_128(data).hexdigest() and writer.size == len(data)


def test_after_a_sink_error_writes_are_dropped_and_the_error_kept() -> None:
    calls = []

    def failing(view):
        calls.append(len(view))
        raise OSError("disk full")

    writer = HashingWriter(failing)
    with pytest.raises(OSError, match="disk full"):
        writer.write(b"abc")
    assert writer.write(b"more") == 4  # e.g. a buffered writer flushing as it is collected
    assert calls == [3] and isinstance(writer.error, OSError)


@pytest.mark.parametrize("without_crc32", [True, False])
def test_torch_payloads_load_with_plain_torch_load_with_or_without_zip_crc32s(monkeypatch, without_crc32) -> None:
    if without_crc32 and not serialization.SAVES_WITHOUT_CRC32:
        pytest.skip("this torch cannot write archives without CRC32s")
    monkeypatch.setenv(PAYLOAD_FORMAT_VARIABLE, "torch")
    monkeypatch.setattr(serialization, "SAVES_WITHOUT_CRC32", without_crc32)
    state = {"w": torch.arange(1000.0), "n": 3, "nested": {"b": torch.ones(2, dtype=torch.bool)}}
    pieces: list[bytes] = []
    info = serialize_state(state, lambda view: pieces.append(bytes(view)), "here")
    payload = b"".join(pieces)
    crcs = {entry.filename.split("/", 1)[1]: entry.CRC for entry in zipfile.ZipFile(io.BytesIO(payload)).infolist()}
    assert (crcs["data/0"] == 0) == without_crc32  # the digest covers what CRC32 would
    assert info.digest == "xxh3-128:" + xxhash.xxh3_128(payload).hexdigest()
    loaded = torch.load(io.BytesIO(payload), weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["n"] == 3 and torch.equal(loaded["nested"]["b"], state["nested"]["b"])
