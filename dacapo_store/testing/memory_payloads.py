"""A payload store in this process's memory: the second payload store, beside the local
files, that shows what a new one takes (:class:`~dacapo_store.payload_store.PayloadStore`'s
five methods) and runs the whole contract suite with the local SQLite catalog::

    LocalWeightsStore(directory, payloads=MemoryPayloads())

Payloads last as long as the object (tests, benchmarks of the catalog alone).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..errors import CorruptCheckpointError
from ..payload_store import PARTIAL_SUFFIX, PayloadStore, Write

T = TypeVar("T")


class MemoryPayloads(PayloadStore):
    """Published payloads as ``bytes`` by location in :attr:`blobs` (a test may change them to
    simulate damage); payloads being written are listed with their size so far. Every method
    is atomic under one lock."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self._writing: dict[str, int] = {}
        """Location + PARTIAL_SUFFIX -> bytes written so far, of each payload being written."""
        self._lock = threading.Lock()

    def write(self, location: str, produce: Callable[[Write], T]) -> T:
        partial = location + PARTIAL_SUFFIX
        pieces: list[bytes] = []

        def write(piece: Any) -> int:
            pieces.append(bytes(piece))
            with self._lock:
                if partial in self._writing:
                    self._writing[partial] += len(pieces[-1])
            return len(pieces[-1])

        with self._lock:
            self._writing[partial] = 0
        try:
            result = produce(write)
            with self._lock:  # publish: the whole payload appears at once
                if self._writing.pop(partial, None) is None:
                    raise FileNotFoundError(f"payload {partial} was deleted while it was written")
                self.blobs[location] = b"".join(pieces)
        except BaseException:
            with self._lock:
                self._writing.pop(partial, None)
            raise
        return result

    def make_durable(self, locations: Iterable[str]) -> None:
        """Nothing to do: memory is as durable as this store gets."""

    def read_into(self, location: str, memory: Any, where: str) -> None:
        with self._lock:
            data = self.blobs.get(location)
        if data is None:
            raise CorruptCheckpointError(f"{where}: its payload {location} is missing")
        with memoryview(memory) as view:
            if len(data) != len(view):
                raise CorruptCheckpointError(
                    f"{where}: its payload has {len(data)} bytes, the catalog records {len(view)}"
                )
            view[:] = data

    def delete(self, name: str) -> bool:
        with self._lock:
            return self.blobs.pop(name, None) is not None or self._writing.pop(name, None) is not None

    def list(self) -> dict[str, int]:
        with self._lock:
            return {**{name: len(data) for name, data in self.blobs.items()}, **self._writing}
