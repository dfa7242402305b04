"""The payload seam: where a catalog's payloads (the serialized state dicts) live, as bytes by
location. A catalog (checkpoint records, reservations, scores) decides which payloads exist; a
payload store only keeps bytes:

- :meth:`PayloadStore.write` streams a payload in under a temporary name and publishes it
  under its location when the writer returns (never a half-written payload at a location);
- :meth:`PayloadStore.make_durable` is the barrier before the catalog commit that lists them;
- :meth:`PayloadStore.read_into` reads a payload into memory the caller gives; the caller
  verifies size and digest against the catalog before anything is parsed
  (:meth:`PayloadStore.load` and :meth:`PayloadStore.verify` do both);
- :meth:`PayloadStore.delete` and :meth:`PayloadStore.list` serve removal and garbage
  collection (a payload the catalog does not list is garbage once it is old enough).

The local backend keeps payloads in files (:class:`dacapo_store.local.payloads.FilePayloads`),
the MongoDB backend in GridFS (:class:`dacapo_store.mongo.payloads.GridFSPayloads`);
:class:`dacapo_store.testing.memory_payloads.MemoryPayloads` keeps them in memory and passes
the whole contract suite beside the local catalog.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .digests import format_digest, new_hash
from .payload_memory import payload_memory
from .records import PartInfo
from .serialization import check_payload, load_state_from_memory, verifying_algorithm

T = TypeVar("T")

PARTIAL_SUFFIX = ".partial"
"""What :meth:`PayloadStore.list` appends to the location of a payload still being written."""

Write = Callable[[Any], Any]
"""Appends one piece (bytes or a buffer) to the payload being written."""


class PayloadStore(ABC):
    """Payload bytes by location (a name the catalog records; validated by the store that
    uses this one, so a payload store may trust it)."""

    @abstractmethod
    def write(self, location: str, produce: Callable[[Write], T]) -> T:
        """Stream a payload in: ``produce(write)`` calls ``write(piece)`` for each piece in
        order; when it returns, the payload is published under ``location`` (atomically: a
        reader finds the whole payload or none) and its result is returned. While written, the
        payload is listed as ``location + PARTIAL_SUFFIX``.

        Raises:
            what ``produce`` or the storage raises; nothing is left under either name then.
        """

    @abstractmethod
    def make_durable(self, locations: Iterable[str]) -> None:
        """Make the published payloads ``locations`` survive a crash (the barrier before the
        catalog commit that lists them). Raises OSError (or the storage's errors)."""

    @abstractmethod
    def read_into(self, location: str, memory: Any, where: str) -> None:
        """Copy the payload at ``location`` into ``memory`` (a writable buffer of the recorded
        size); ``where`` names the checkpoint part for messages.

        Raises:
            CorruptCheckpointError: no payload at ``location``, or its size is not the size of
                ``memory``.
        """

    @abstractmethod
    def delete(self, name: str) -> bool:
        """Delete the payload ``name`` (a location, or a location with :data:`PARTIAL_SUFFIX`);
        return whether it existed."""

    @abstractmethod
    def list(self) -> dict[str, int]:
        """Every payload's name (published, or with :data:`PARTIAL_SUFFIX` while written) and
        size in bytes (for garbage collection)."""

    def discard(self, location: str) -> None:
        """Delete the payload at ``location`` whether it was published or not."""
        self.delete(location + PARTIAL_SUFFIX)
        self.delete(location)

    def load(self, expected: PartInfo, map_location: Any, where: str, mmap: bool = False) -> Any:
        """The state dict of the payload ``expected`` describes, read into private memory and
        verified against the recorded size and digest before torch parses it (``mmap`` is a
        hint that a store without files ignores).

        Raises:
            CorruptCheckpointError: missing, damaged, or not a plain state dict.
        """
        memory = payload_memory(expected.size)
        self._read_verified(expected, where, memory)
        return load_state_from_memory(memory, map_location, where)

    def load_to_copy(self, expected: PartInfo, where: str) -> Any:
        """The state dict of the payload ``expected`` describes, on the CPU and verified like
        :meth:`load`, to be copied into a model at once and dropped: its tensors may view memory
        (a file map) that must not outlive the copy. By default :meth:`load`.

        Raises:
            CorruptCheckpointError: missing, damaged, or not a plain state dict.
        """
        return self.load(expected, "cpu", where)

    def verify(self, expected: PartInfo, where: str) -> None:
        """Check the payload ``expected`` describes against its recorded size and digest.

        Raises:
            CorruptCheckpointError: missing or damaged.
        """
        self._read_verified(expected, where, bytearray(expected.size))

    def _read_verified(self, expected: PartInfo, where: str, memory: Any) -> None:
        algorithm = verifying_algorithm(expected, where)
        self.read_into(expected.location, memory, where)
        hash_object = new_hash(algorithm)
        hash_object.update(memory)
        check_payload(len(memory), format_digest(algorithm, hash_object), expected, where)
