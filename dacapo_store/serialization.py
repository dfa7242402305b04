"""Serializing state dicts into a backend's payload storage, and loading them back verified.

A part is written with ``torch.save`` through a :class:`HashingWriter`, which counts the bytes
and hashes them (XXH3-128, see :mod:`dacapo_store.digests`) while it hands them on to the
backend's sink: the serialized checkpoint is streamed, never held in memory as a whole.

A part is read back with ``torch.load(weights_only=True)`` and returned only once its size
and digest match what the catalog recorded: a local payload file is verified before it is
loaded, a GridFS payload is hashed chunk by chunk while ``torch.load`` reads it
(:func:`load_verified`). ``weights_only`` refuses anything but plain state dicts, so no
pickled code runs, verified or not; a digest mismatch is reported as corruption whatever
torch made of the bytes.
"""

from __future__ import annotations

import os
import time
import zipfile
from typing import Any, BinaryIO, Callable

import torch
from torch.serialization import default_restore_location

from .digests import DEFAULT_ALGORITHM, algorithm_of, format_digest, new_hash
from .errors import CorruptCheckpointError
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
        sink: Callable[[memoryview], object],
        heartbeat: Callable[[], None] | None = None,
        heartbeat_every: float = DEFAULT_HEARTBEAT_SECONDS,
    ) -> None:
        self._sink = sink
        self._hash = new_hash(DEFAULT_ALGORITHM)
        self._heartbeat = heartbeat
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
        """Hand ``view`` to the sink, then hash and count it (no copy: the hash reads the
        view while ``torch.save`` still holds it)."""
        self._sink(view)
        self._hash.update(view)
        self.size += len(view)
        if self._heartbeat is not None and time.monotonic() >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = time.monotonic() + self._heartbeat_every

    def flush(self) -> None:
        """Nothing to do: the sink owns buffering (``torch.save`` requires the method)."""

    def digest(self) -> str:
        """The digest of everything written, ``"<algorithm>:<hex>"``."""
        return format_digest(DEFAULT_ALGORITHM, self._hash)


def serialize_state(
    state: Any,
    sink: Callable[[memoryview], object],
    location: str,
    heartbeat: Callable[[], None] | None = None,
    heartbeat_every: float = DEFAULT_HEARTBEAT_SECONDS,
) -> PartInfo:
    """Stream ``torch.save(state)`` into ``sink`` and return the part's size and digest.

    ``sink`` is called with each piece of the payload in order; a piece is only valid during
    the call.

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
    return PartInfo(location=location, size=writer.size, digest=writer.digest())


def verifying_algorithm(expected: PartInfo, describe: str) -> str:
    """The digest algorithm that the catalog's entry ``expected`` names.

    Raises:
        CorruptCheckpointError: the catalog's digest is not a valid digest.
    """
    try:
        return algorithm_of(expected.digest)
    except ValueError as error:
        raise CorruptCheckpointError(f"{describe}: the catalog records an invalid digest ({error})") from None


def check_size(size: int, expected: PartInfo, describe: str) -> None:
    """Raise CorruptCheckpointError (naming ``describe``) unless ``size`` is the recorded size."""
    if size != expected.size:
        raise CorruptCheckpointError(
            f"{describe}: stored payload has {size} bytes, the catalog recorded {expected.size}"
        )


def check_payload(size: int, digest: str, expected: PartInfo, describe: str) -> None:
    """Compare a payload's ``size`` and ``digest`` with the catalog's ``expected``.

    Raises:
        CorruptCheckpointError: naming ``describe``, for a wrong size or digest.
    """
    check_size(size, expected, describe)
    if digest != expected.digest:
        raise CorruptCheckpointError(
            f"{describe}: digest mismatch (stored payload {digest}, catalog {expected.digest}): "
            "the payload is corrupt"
        )


def load_verified(
    source: Any, finish: Callable[[], tuple[int, str]], expected: PartInfo, map_location: Any, describe: str
) -> Any:
    """``torch.load`` a part from ``source`` while its bytes are hashed, then check them.

    ``finish()`` runs after the load, whether it succeeded or not: it hashes whatever of the
    payload was not hashed yet and returns the payload's size and digest. A wrong size or
    digest is reported as corruption even where the load failed too (torch's error is
    chained): a corrupt payload is blamed as corrupt, whatever torch made of it. An error of
    ``finish()`` itself (the payload could not be read: a lost connection) propagates as it is.

    The bytes reach ``torch.load(weights_only=True)`` before their digest is known, which is
    safe by design of ``weights_only`` (it refuses anything but tensors and plain containers,
    verified or not); nothing is returned unless the digest matches.

    Returns:
        The state dict, once the payload's size and digest match ``expected``.

    Raises:
        CorruptCheckpointError: wrong size or digest, or a payload that is not a plain state
            dict (see :func:`load_state`).
        RuntimeError and others: as ``torch.load`` for a verified payload it cannot place;
            as ``finish()``.
    """
    load_error: Exception | None = None
    try:
        state = load_state(source, map_location, describe)
    except Exception as error:  # the digest decides first whether the payload is to blame
        load_error = error
    try:
        check_payload(*finish(), expected, describe)
    except CorruptCheckpointError as corrupt:
        raise corrupt from load_error
    if load_error is not None:
        raise load_error
    return state


ZIP_MAGIC = b"PK\x03\x04"
"""The first bytes of every payload: ``torch.save`` writes a zip archive."""


def load_state(source: Any, map_location: Any, describe: str, mmap: bool = False) -> Any:
    """``torch.load`` a payload (a path, or a readable seekable file), weights only.

    A payload that is not a torch zip archive is refused before torch reads it. Any error
    torch raises while reading the archive is the payload's fault (a foreign or damaged
    archive makes torch fail in many ways: RuntimeError, KeyError, ValueError,
    UnicodeDecodeError...), except errors in placing a storage on ``map_location``, running
    out of memory, and I/O errors of ``source``.

    Raises:
        CorruptCheckpointError: the payload is not a plain state dict (e.g. a pickle that would
            run code) or not a valid torch archive: it is refused and nothing of it is executed.
        RuntimeError and others: as ``torch.load`` for a valid payload it cannot place (an
            unavailable ``map_location`` device, out of memory): the checkpoint is not blamed.
        OSError: reading ``source`` failed.
    """
    head = _read_head(source, len(ZIP_MAGIC))
    if head != ZIP_MAGIC:
        raise CorruptCheckpointError(
            f"{describe}: refused to load the payload, it is not a torch archive "
            f"(it starts with {head!r}, torch.save writes {ZIP_MAGIC!r})"
        )
    placement = _Placement(map_location)
    try:
        return torch.load(source, map_location=placement.map_location, weights_only=True, mmap=mmap)
    except (MemoryError, OSError, torch.OutOfMemoryError):
        raise  # not the payload's content (CorruptCheckpointError is an OSError: kept as it is)
    except Exception as error:
        if placement.failed:
            raise
        raise CorruptCheckpointError(
            f"{describe}: refused to load the payload, it is not a plain torch state dict "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from error


def check_uncompressed_archive(file: BinaryIO, describe: str) -> None:
    """Check that ``file`` (seekable; left at its start) is a zip archive whose records are
    stored uncompressed and fit in the file, as ``torch.save`` writes them.

    ``torch.load`` also reads compressed records, so a small hostile file (a "zip bomb") could
    otherwise expand into any amount of memory; stored records cannot be larger than the file.

    Raises:
        CorruptCheckpointError: not a zip archive, compressed records, or records declaring
            more bytes than the file holds.
    """
    size = file.seek(0, os.SEEK_END)
    file.seek(0)
    try:
        with zipfile.ZipFile(file) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        raise CorruptCheckpointError(f"{describe}: refused, it is not a valid zip archive ({error})") from None
    finally:
        file.seek(0)
    compressed = [record.filename for record in records if record.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise CorruptCheckpointError(
            f"{describe}: refused, {len(compressed)} of its records are compressed (e.g. "
            f"{compressed[0]!r}), which torch.save never does: it could expand without bound"
        )
    declared = sum(record.file_size for record in records)
    if declared > size:
        raise CorruptCheckpointError(
            f"{describe}: refused, its records declare {declared} bytes, more than its {size}"
        )


def _read_head(source: Any, size: int) -> bytes:
    """The first ``size`` bytes of ``source`` (a path, or a seekable file left where it was)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            return file.read(size)
    start = source.tell()
    try:
        return source.read(size)
    finally:
        source.seek(start)


class _Placement:
    """What ``torch.load`` gets as ``map_location``: the caller's, placed by torch's own
    ``default_restore_location``, noting whether placing a storage failed (an unavailable
    device), so that such an error is not blamed on the payload. A meta ``map_location`` is
    passed on as it is (torch then reads no tensor data, and places nothing)."""

    def __init__(self, map_location: Any) -> None:
        self.failed = False
        self._map_location = map_location
        is_meta = (isinstance(map_location, str) and map_location == "meta") or (
            isinstance(map_location, torch.device) and map_location.type == "meta"
        )
        self.map_location = map_location if is_meta else self._restore

    def _restore(self, storage: Any, location: str) -> Any:
        try:
            return self._place(storage, location)
        except BaseException:
            self.failed = True
            raise

    def _place(self, storage: Any, location: str) -> Any:
        """``torch.load``'s placement for each kind of ``map_location``."""
        map_location = self._map_location
        if map_location is None:
            return default_restore_location(storage, location)
        if isinstance(map_location, dict):
            return default_restore_location(storage, map_location.get(location, location))
        if isinstance(map_location, (str, bytes)):
            return default_restore_location(storage, map_location)
        if isinstance(map_location, torch.device):
            return default_restore_location(storage, str(map_location))
        placed = map_location(storage, location)
        return default_restore_location(storage, location) if placed is None else placed


_FD_DIRECTORY = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)


def fd_path(fd: int, fallback: str | os.PathLike) -> str:
    """A path that opens the file behind descriptor ``fd`` (``/proc/self/fd/N`` where the
    system has it, so that a reader opens the very file that was checked), else ``fallback``."""
    return f"{_FD_DIRECTORY}/{fd}" if _FD_DIRECTORY is not None else os.fspath(fallback)
