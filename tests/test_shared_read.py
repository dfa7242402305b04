"""Local payloads read by several threads at once (``payload_file._SharedRead``): the bytes,
the digest over them in order, and errors, whichever thread meets them."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from dacapo_store import CorruptCheckpointError, LocalWeightsStore, Weights, helper_threads
from dacapo_store.local import payload_file

PIECE = 4096


@pytest.fixture
def shared_reads(monkeypatch):
    """Every payload is read by three threads in pieces of PIECE bytes; returns the preadv
    calls seen, as (thread, offset), and the number of calls still running."""
    monkeypatch.setattr(payload_file, "PARALLEL_READ_BYTES", 0)
    monkeypatch.setattr(payload_file, "_cached", lambda fd, size: True)  # cold files too
    monkeypatch.setattr(payload_file, "PIECE_BYTES", PIECE)
    monkeypatch.setattr(helper_threads, "thread_count", lambda: 3)
    seen = {"calls": [], "running": 0}
    lock = threading.Lock()
    real = payload_file.os.preadv

    def preadv(fd, buffers, offset):
        with lock:
            seen["calls"].append((threading.current_thread().name, offset))
            seen["running"] += 1
        try:
            return seen.get("hook", real)(fd, buffers, offset)
        finally:
            with lock:
                seen["running"] -= 1

    seen["real"] = real
    monkeypatch.setattr(payload_file.os, "preadv", preadv)
    return seen


def _stored(tmp_path):
    store = LocalWeightsStore(tmp_path)
    model = {
        "w": torch.arange(50_000.0), "b": torch.arange(7, dtype=torch.int64), "h": torch.ones(3, dtype=torch.float16),
    }
    info = store.put_weights("r", 1, Weights(model, {"state": {}, "param_groups": []}))
    return store, model, store.payload_path(info.parts["model"].location)


def test_a_payload_read_by_several_threads_loads_exactly(tmp_path, shared_reads) -> None:
    store, model, path = _stored(tmp_path)
    loaded = store.retrieve_weights("r", 1, optimizer=False).model
    assert all(torch.equal(loaded[key], model[key]) for key in model)
    assert sorted(offset for _, offset in shared_reads["calls"]) == list(range(0, path.stat().st_size, PIECE))


def test_pieces_that_land_out_of_order_are_hashed_in_order(tmp_path, shared_reads) -> None:
    store, model, _ = _stored(tmp_path)
    later_landed = threading.Event()

    def first_piece_last(fd, buffers, offset):
        if offset == 0:  # held back until a later piece has landed
            assert later_landed.wait(timeout=60)
        count = shared_reads["real"](fd, buffers, offset)
        if offset == 2 * PIECE:
            later_landed.set()
        return count

    shared_reads["hook"] = first_piece_last
    loaded = store.retrieve_weights("r", 1).model  # the digest matches only if hashed in order
    assert later_landed.is_set()  # so another thread read on while piece 0 was held back
    assert all(torch.equal(loaded[key], model[key]) for key in model)


def test_a_changed_byte_in_any_piece_is_caught(tmp_path, shared_reads) -> None:
    store, _, path = _stored(tmp_path)
    data = bytearray(path.read_bytes())
    data[3 * PIECE + 5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="digest mismatch"):
        store.retrieve_weights("r", 1)


def test_a_file_that_ends_early_is_corrupt_and_every_thread_has_stopped(tmp_path, shared_reads) -> None:
    store, _, path = _stored(tmp_path)
    info = store.checkpoint_info("r", 1).parts["model"]
    longer = payload_file.PartInfo(info.location, info.size + 3 * PIECE, info.digest)
    with open(path, "rb", buffering=0) as file, pytest.raises(CorruptCheckpointError, match="bytes"):
        payload_file._read_verified(file, longer, "the model part")
    assert shared_reads["running"] == 0  # no thread still writes into the memory


def test_a_read_error_of_any_thread_comes_out_as_it_is(tmp_path, shared_reads) -> None:
    store, _, _ = _stored(tmp_path)

    def failing(fd, buffers, offset):
        if offset == 2 * PIECE:
            raise OSError(5, "Input/output error")
        return shared_reads["real"](fd, buffers, offset)

    shared_reads["hook"] = failing
    with pytest.raises(OSError, match="Input/output error") as raised:
        store.retrieve_weights("r", 1)
    assert not isinstance(raised.value, CorruptCheckpointError)  # the disk failed, not the payload
    assert shared_reads["running"] == 0


def test_without_helper_threads_the_calling_thread_reads_it_all(tmp_path, shared_reads, monkeypatch) -> None:
    """At interpreter shutdown no helper thread starts."""

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    store, model, _ = _stored(tmp_path)
    loaded = store.retrieve_weights("r", 1).model
    assert all(torch.equal(loaded[key], model[key]) for key in model)
    assert {thread for thread, _ in shared_reads["calls"]} == {threading.current_thread().name}


def test_ctrl_c_while_waiting_stops_the_helpers_and_returns_only_once_they_have_stopped(
    tmp_path, shared_reads, monkeypatch
) -> None:
    """A helper is still reading when Ctrl-C reaches the calling thread (joining the helpers): the interrupt comes out only once that helper is done writing into the memory."""
    store, _, path = _stored(tmp_path)
    release = threading.Event()
    helper_pieces: list[int] = []

    def slow_helper(fd, buffers, offset):
        if threading.current_thread() is not threading.main_thread():
            helper_pieces.append(offset)
            if len(helper_pieces) == 1:
                assert release.wait(timeout=60)
        return shared_reads["real"](fd, buffers, offset)

    real_join = threading.Thread.join

    def interrupted_join(self, timeout=None):
        if threading.current_thread() is threading.main_thread() and not release.is_set():
            release.set()  # the helper goes on only now, while the interrupt is handled
            raise KeyboardInterrupt
        return real_join(self, timeout)

    shared_reads["hook"] = slow_helper
    monkeypatch.setattr(threading.Thread, "join", interrupted_join)
    with pytest.raises(KeyboardInterrupt):
        store.retrieve_weights("r", 1, optimizer=False)
    assert shared_reads["running"] == 0 and release.is_set()


def test_a_file_truncated_while_read_is_reported_with_its_size(tmp_path, shared_reads) -> None:
    store, _, path = _stored(tmp_path)
    os.truncate(path, PIECE + 10)  # pieces past the end read nothing at their own offsets
    info = store.checkpoint_info("r", 1).parts["model"]
    with open(path, "rb", buffering=0) as file, pytest.raises(CorruptCheckpointError, match=f"has {PIECE + 10} bytes"):
        payload_file._read_verified(file, info, "the model part")


def test_a_file_counts_as_cached_once_read_and_not_once_evicted(tmp_path) -> None:
    """Only a payload the page cache holds is worth several threads (from the disk, one
    sequential reader is faster): _cached tells the two apart without waiting for the disk."""
    path = tmp_path / "payload"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 1 << 20, 0)
        assert payload_file._cached(fd, 1 << 20)
        if not hasattr(os, "RWF_NOWAIT"):
            pytest.skip("no RWF_NOWAIT here: every file counts as cached")
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if payload_file._cached(fd, 1 << 20):
            pytest.skip("this file system keeps the file cached (tmpfs) or cannot tell")
        os.pread(fd, 1, (1 << 20) - 1)
        assert payload_file._cached(fd, 1 << 20)
    finally:
        os.close(fd)
