"""Serializing state dicts into a byte stream, and verifying and loading them back.

A part is written with ``torch.save`` through a :class:`HashingWriter`, which counts the bytes
and computes their sha256 while it hands them on to the backend's sink: the serialized
checkpoint is streamed and never held in memory as a whole. It is read back only after its
size and digest match what the catalog recorded, and with ``torch.load(weights_only=True)``:
the payload must be plain state dicts, never arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import pickle
import time
import zipfile
from collections.abc import Iterable
from typing import Any, Callable

import torch

from .background_hash import BackgroundSha256
from .errors import CorruptCheckpointError
from .memory_file import MemoryFile
from .records import PartInfo

DEFAULT_HEARTBEAT_SECONDS = 60.0


class HashingWriter:
    """A write-only file object that hashes and counts what it passes to ``sink``.

    ``heartbeat`` (optional) is called from a write once ``heartbeat_every`` seconds have
    passed since the last call (or since the writer was made), so a long upload shows it is
    alive; an exception it raises aborts the write.
    """

    def __init__(
        self,
        sink: Callable[[Any], object],
        heartbeat: Callable[[], None] | None = None,
        heartbeat_every: float = DEFAULT_HEARTBEAT_SECONDS,
    ) -> None:
        self._sink = sink
        self._heartbeat = heartbeat
        self._hash = BackgroundSha256()
        self._heartbeat_every = heartbeat_every
        self._next_heartbeat = time.monotonic() + heartbeat_every
        self.size = 0
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        """Hash, count and forward ``data`` (bytes or memoryview); returns its length.

        The first exception is kept in :attr:`error` (``torch.save`` masks it with its own
        error while closing the archive; :func:`serialize_state` re-raises it).
        """
        view = memoryview(data).cast("B")
        try:
            self._forward(view)
        except BaseException as error:
            self.error = error
            raise
        return len(view)

    def _forward(self, view: memoryview) -> None:
        """Hand ``view`` to the sink, then hash and count it."""
        self._sink(view)
        self._hash.update(view)
        self.size += len(view)
        if self._heartbeat is not None and time.monotonic() >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = time.monotonic() + self._heartbeat_every

    def flush(self) -> None:
        """Nothing to do: the sink owns buffering (``torch.save`` requires the method)."""

    def hexdigest(self) -> str:
        """The sha256 of everything written (call once, after the last write)."""
        return self._hash.hexdigest()


def serialize_state(
    state: Any,
    sink: Callable[[Any], object],
    location: str,
    heartbeat: Callable[[], None] | None = None,
    heartbeat_every: float = DEFAULT_HEARTBEAT_SECONDS,
) -> PartInfo:
    """Stream ``torch.save(state)`` into ``sink`` and return the part's size and digest.

    Raises:
        the first exception of ``sink`` or ``heartbeat`` (not torch's follow-up error).
    """
    writer = HashingWriter(sink, heartbeat, heartbeat_every)
    try:
        torch.save(state, writer)
    except BaseException:
        if writer.error is not None:
            raise writer.error from None
        raise
    return PartInfo(location=location, size=writer.size, sha256=writer.hexdigest())


def _check_payload(size: int, digest: str, expected: PartInfo, describe: str, what: str) -> None:
    """Compare a payload's ``size`` and sha256 ``digest`` with the catalog's ``expected``.

    Raises:
        CorruptCheckpointError: naming ``describe`` and ``what`` was read.
    """
    if size != expected.size:
        raise CorruptCheckpointError(
            f"{describe}: {what} has {size} bytes, the catalog recorded {expected.size}"
        )
    if digest != expected.sha256:
        raise CorruptCheckpointError(
            f"{describe}: sha256 mismatch ({what} {digest[:16]}..., catalog "
            f"{expected.sha256[:16]}...): the payload is corrupt"
        )


def verified_memory_file(blocks: Iterable[Any], expected: PartInfo, describe: str) -> MemoryFile:
    """Copy ``blocks`` (bytes-like, in order) into a :class:`MemoryFile`, hashing as they come.

    The payload is copied once, into memory of its recorded size; ``torch.load(path, mmap=True)``
    then maps it instead of copying every tensor again.

    Returns:
        The filled file, whose size and sha256 match ``expected``.

    Raises:
        CorruptCheckpointError: more or fewer bytes than recorded, or the wrong digest (the
            file is closed).
    """
    if expected.size <= 0:
        raise CorruptCheckpointError(f"{describe}: the catalog records an empty payload")
    file = MemoryFile(expected.size)
    digest = BackgroundSha256()
    size = 0
    try:
        for block in blocks:
            if size + len(block) > expected.size:
                raise CorruptCheckpointError(
                    f"{describe}: stored payload is longer than the {expected.size} bytes the "
                    "catalog recorded"
                )
            digest.update(block)
            file.write_at(size, block)
            size += len(block)
        _check_payload(size, digest.hexdigest(), expected, describe, "stored payload")
    except BaseException:
        file.close()
        raise
    return file


def verify_file(path: str | os.PathLike, expected: PartInfo, describe: str) -> None:
    """Check the file at ``path`` against the recorded size and sha256.

    The file is hashed through a memory map (no copy into a read buffer); its pages stay in the
    page cache for the ``torch.load(mmap=True)`` that follows.

    Raises:
        CorruptCheckpointError: the file is missing, has the wrong size or the wrong digest.
    """
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size != expected.size:
                _check_payload(size, "", expected, describe, "payload file")
            if size == 0:  # an empty file cannot be memory-mapped
                digest = hashlib.sha256().hexdigest()
            else:
                with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    digest = hashlib.sha256(mapped).hexdigest()
    except FileNotFoundError as error:
        raise CorruptCheckpointError(f"{describe}: payload file {path} is missing") from error
    _check_payload(size, digest, expected, describe, "payload file")


_NOT_AN_ARCHIVE = "PytorchStreamReader"
"""torch's reader names itself in every error about a damaged or foreign archive."""


def load_state(source: Any, map_location: Any, describe: str, mmap: bool = False) -> Any:
    """``torch.load`` a verified payload (a file path or a bytes-like object), weights only.

    Raises:
        CorruptCheckpointError: the payload is not a plain state dict (e.g. a pickle that would
            run code) or not a torch archive: it is refused and nothing of it is executed.
        RuntimeError and others: as ``torch.load`` for a valid payload it cannot place (an
            unavailable ``map_location`` device, out of memory): the checkpoint is not blamed.
    """
    if not isinstance(source, (str, os.PathLike)):
        source = io.BytesIO(source)
    try:
        return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and _NOT_AN_ARCHIVE not in str(error):
            raise
        raise CorruptCheckpointError(
            f"{describe}: refused to load the payload, it is not a plain torch state dict "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from error
