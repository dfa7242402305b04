"""Early writeback: the file holds exactly what was written, with or without the kernel's help."""

from __future__ import annotations

import os

import pytest

from dacapo_store.local import writeback
from dacapo_store.local.writeback import WRITEBACK_BYTES, WritebackFile

PIECES = [b"h" * 30, os.urandom(WRITEBACK_BYTES + 7), b"", os.urandom(3 * WRITEBACK_BYTES), memoryview(b"tail" * 100)]


def _write(path) -> bytes:
    with open(path, "wb") as file:
        target = WritebackFile(file)
        assert [target.write(piece) for piece in PIECES] == [len(piece) for piece in PIECES]
    return path.read_bytes()


def test_the_file_holds_every_byte_in_order(tmp_path):
    assert _write(tmp_path / "a") == b"".join(bytes(piece) for piece in PIECES)


@pytest.mark.parametrize("kernel", ["missing", "refusing"])
def test_writes_go_on_where_the_kernel_cannot_help(tmp_path, monkeypatch, kernel):
    calls = []

    def refusing(fd, offset, length, flags):
        calls.append((offset, length))
        return -1

    monkeypatch.setattr(writeback, "_sync_file_range", None if kernel == "missing" else refusing)
    assert _write(tmp_path / "b") == b"".join(bytes(piece) for piece in PIECES)
    assert len(calls) == (0 if kernel == "missing" else 1)  # refused once, then not asked again


def test_writeback_is_started_for_each_written_range(tmp_path, monkeypatch):
    ranges = []
    real = writeback._sync_file_range

    def recording(fd, offset, length, flags):
        ranges.append((offset, length))
        return real(fd, offset, length, flags) if real is not None else 0

    monkeypatch.setattr(writeback, "_sync_file_range", recording)
    _write(tmp_path / "c")
    assert ranges[0][0] == 0
    assert all(start == previous + length for (previous, length), (start, _) in zip(ranges, ranges[1:]))
    assert all(length >= WRITEBACK_BYTES for _, length in ranges)
