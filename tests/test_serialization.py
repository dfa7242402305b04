"""Streaming a state dict into a sink: what the sink receives, and the digest of it."""

from __future__ import annotations

import io

import torch
import xxhash

from dacapo_store.serialization import GATHER_BYTES, HashingWriter, serialize_state


def test_many_small_tensors_reach_the_sink_in_few_large_pieces_and_hash_as_written() -> None:
    state = {f"p{i}": torch.full((10,), float(i)) for i in range(3000)}
    pieces: list[bytes] = []
    info = serialize_state(state, lambda view: pieces.append(bytes(view)), "here")
    expected = io.BytesIO()
    torch.save(state, expected)
    payload = b"".join(pieces)
    assert payload == expected.getvalue()
    assert (info.size, info.digest) == (len(payload), "xxh3-128:" + xxhash.xxh3_128(payload).hexdigest())
    assert len(pieces) <= len(payload) // GATHER_BYTES + 2  # not ~5 per tensor
    assert torch.equal(torch.load(io.BytesIO(payload), weights_only=True)["p2999"], state["p2999"])


def test_large_writes_pass_straight_through_after_what_was_gathered() -> None:
    received: list[tuple[int, int]] = []
    writer = HashingWriter(lambda view: received.append((len(view), view.obj is big_buffer)))
    big_buffer = bytearray(GATHER_BYTES + 5)
    writer.write(b"head")
    writer.write(memoryview(big_buffer))
    writer.write(b"tail")
    writer.flush()
    assert received == [(4, False), (GATHER_BYTES + 5, True), (4, False)]
    assert writer.size == GATHER_BYTES + 13
