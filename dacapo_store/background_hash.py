"""A sha256 computed on a worker thread, so that hashing overlaps serialization and I/O.

``hashlib`` releases the GIL on large buffers: while the worker hashes one block, the caller
(``torch.save`` computing its CRCs, a file write, a GridFS insert) carries on with the next.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

BLOCK_BYTES = 4 * 1024 * 1024
"""Data is handed to the worker in blocks of at least this size (small writes are coalesced)."""

SHARE_BYTES_FROM = 64 * 1024
"""``bytes`` objects at least this large are immutable and big enough to hash without a copy."""

MAX_PENDING_BLOCKS = 2
"""Blocks waiting for the worker; :meth:`BackgroundSha256.update` blocks beyond that, which bounds
the memory to about ``(MAX_PENDING_BLOCKS + 2)`` blocks plus one write."""


class BackgroundSha256:
    """``hashlib.sha256``'s ``update``/``hexdigest`` with the hashing done on one worker thread.

    ``update`` copies its data (the caller may reuse its buffer as soon as it returns), except
    large ``bytes``, which cannot change; blocks are hashed in order. ``hexdigest`` waits for the worker and stops it; call it once, last.
    A hasher dropped without ``hexdigest`` (an aborted write) lets its worker exit on its own.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._block: bytes | bytearray = bytearray()
        self._pending: deque[Future[None]] = deque()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")

    def update(self, data: Any) -> None:
        """Queue ``data`` (bytes-like) for hashing."""
        if isinstance(data, bytes) and len(data) >= SHARE_BYTES_FROM:
            self._submit()
            self._block = data
            self._submit()
            return
        self._block += data
        if len(self._block) >= BLOCK_BYTES:
            self._submit()

    def hexdigest(self) -> str:
        """Wait for every queued block and return the hex digest of all data."""
        self._submit()
        while self._pending:
            self._pending.popleft().result()
        self._worker.shutdown()
        return self._hash.hexdigest()

    def _submit(self) -> None:
        if self._block:
            self._pending.append(self._worker.submit(self._hash.update, self._block))
            self._block = bytearray()
        while len(self._pending) > MAX_PENDING_BLOCKS:
            self._pending.popleft().result()
