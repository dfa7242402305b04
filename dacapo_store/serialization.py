"""Serializing state dicts into a backend's payload storage, and loading them back verified.

A part is written in the safetensors layout (:mod:`~dacapo_store.safetensors_layout`: a valid
safetensors file, its structure in the header's metadata, no pickle) when its state dict is
plain, else with ``torch.save``; either way through a :class:`HashingWriter`, which counts the
bytes and hashes them (XXH3-128, see :mod:`dacapo_store.digests`) while it hands them on to the
backend's sink: the serialized checkpoint is streamed, never held in memory as a whole.

A part is read back into private memory (:mod:`~dacapo_store.payload_memory`), hashed as it
arrives, and parsed only once its size and digest match what the catalog recorded; the tensors
are built in that memory (:func:`load_state_from_memory`), so every byte is copied once and what
is parsed is exactly what was verified. Loads are weights only: a safetensors-layout payload (or
a legacy flat v1 one, :mod:`~dacapo_store.flat_format`) holds nothing but data, and a
``torch.save`` archive is read with ``torch.load(weights_only=True)``'s unpickler, which refuses
anything but a plain state dict, so no pickled code runs.

Only public torch APIs are used here (``torch.save``, ``torch.load``,
``torch.serialization.default_restore_location``): no private name of
torch (``torch._C``, ``torch.serialization._...``) and no probing of torch's internals;
``tests/test_serialization.py`` checks it.
"""

from __future__ import annotations

import io
import mmap as mmap_module
import os
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, Callable

import torch
from torch.serialization import default_restore_location

from . import flat_format, safetensors_layout
from .digests import DEFAULT_ALGORITHM, algorithm_of, format_digest, new_hash
from .errors import CorruptCheckpointError
from .payload_memory import payload_memory
from .records import PartInfo
from .state_structure import Undescribable

DEFAULT_HEARTBEAT_SECONDS = 60.0


GATHER_BYTES = 1024 * 1024
"""Writes smaller than this are gathered (by an ``io.BufferedWriter``, in C) into pieces of
this size before they reach the :class:`HashingWriter`: ``torch.save`` writes about five pieces
per tensor (headers, data, padding), and a state dict of many small tensors would otherwise cost
a Python call chain (for GridFS, a ``GridIn.write``) per piece."""


class HashingWriter(io.RawIOBase):
    """A raw write-only file that hashes and counts what it passes to ``sink``.

    ``heartbeat`` (optional) is called from a write once ``heartbeat_every`` seconds have
    passed since the last call (or since the writer was made), so a long upload shows it is
    alive; an exception it raises aborts the write. ``slice_bytes`` (optional) cuts large
    writes into slices of that size for the sink (see :meth:`_forward`).
    """

    def __init__(
        self,
        sink: Callable[[memoryview], object],
        heartbeat: Callable[[], None] | None = None,
        heartbeat_every: float = DEFAULT_HEARTBEAT_SECONDS,
        slice_bytes: int | None = None,
    ) -> None:
        super().__init__()
        self._sink = sink
        self._slice_bytes = slice_bytes
        self._hash = new_hash(DEFAULT_ALGORITHM)
        self._heartbeat = heartbeat
        self._heartbeat_every = heartbeat_every
        self._next_heartbeat = time.monotonic() + heartbeat_every
        self.size = 0
        self.error: BaseException | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        """Hash, count and forward ``data`` (bytes or memoryview); returns its length.

        The first exception is kept in :attr:`error` (``torch.save`` masks it with its own
        error while closing the archive; :func:`serialize_state` re-raises it); after it, writes
        are dropped (the upload is aborted anyway).
        """
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                self._forward(view)
            except BaseException as error:
                self.error = error
                raise
        return len(view)

    def _forward(self, view: memoryview) -> None:
        """Hand ``view`` to the sink, then hash and count it (no copy: the hash reads the
        view while it is still valid). With ``slice_bytes``, slice by slice: each slice is
        hashed right after the sink read it, while it is still in the CPU cache."""
        step = self._slice_bytes or len(view) or 1
        for start in range(0, len(view), step):
            piece = view[start : start + step]
            self._sink(piece)
            self._hash.update(piece)
        self.size += len(view)
        if self._heartbeat is not None and time.monotonic() >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = time.monotonic() + self._heartbeat_every

    def digest(self) -> str:
        """The digest of everything written, ``"<algorithm>:<hex>"``."""
        return format_digest(DEFAULT_ALGORITHM, self._hash)


PAYLOAD_FORMAT_VARIABLE = "DACAPO_STORE_PAYLOAD_FORMAT"
PAYLOAD_FORMATS = ("safetensors", "torch")
_FORMAT_ALIASES = {"flat": "safetensors"}
"""``flat`` (0.5.0's name for its default, flat v1 payloads, no longer written) means the default."""


def payload_format() -> str:
    """The payload format new checkpoints are written in: ``$DACAPO_STORE_PAYLOAD_FORMAT``,
    ``"safetensors"`` (the default, also for ``"flat"``: the safetensors layout for plain state
    dicts, which dacapo-store 0.6 and later read) or ``"torch"`` (``torch.save`` archives only,
    which every version reads).

    Raises:
        ValueError: the variable holds another value.
    """
    chosen = os.environ.get(PAYLOAD_FORMAT_VARIABLE, "").strip().lower() or "safetensors"
    chosen = _FORMAT_ALIASES.get(chosen, chosen)
    if chosen not in PAYLOAD_FORMATS:
        raise ValueError(
            f"${PAYLOAD_FORMAT_VARIABLE} is {chosen!r}: it must be one of {', '.join(PAYLOAD_FORMATS)}"
        )
    return chosen


def _safetensors_plan(state: Any) -> safetensors_layout.PlannedPayload | None:
    """``state`` planned in the safetensors layout, or ``None`` (not plain enough, or not chosen)."""
    if payload_format() != "safetensors":
        return None
    try:
        return safetensors_layout.plan(state)
    except Undescribable:
        return None


def serialize_state(
    state: Any,
    sink: Callable[[memoryview], object],
    location: str,
    heartbeat: Callable[[], None] | None = None,
    heartbeat_every: float = DEFAULT_HEARTBEAT_SECONDS,
    slice_bytes: int | None = None,
) -> PartInfo:
    """Stream ``state`` into ``sink`` as a payload and return the part's size and digest.

    The payload is in the safetensors layout (:mod:`~dacapo_store.safetensors_layout`) where
    ``state`` is plain enough and :func:`payload_format` allows it, else a ``torch.save`` archive.

    ``sink`` is called with each piece of the payload in order (at most ``slice_bytes`` each,
    if given: see :class:`HashingWriter`); a piece is only valid during the call.

    Raises:
        the first exception of ``sink`` or ``heartbeat`` (not torch's follow-up error).
    """
    planned = _safetensors_plan(state)
    writer = HashingWriter(sink, heartbeat, heartbeat_every, slice_bytes)
    gathering = io.BufferedWriter(writer, buffer_size=GATHER_BYTES)
    try:
        if planned is not None:
            planned.write(gathering.write)
        else:
            torch.save(state, gathering)
        gathering.flush()
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


ZIP_MAGIC = b"PK\x03\x04"
"""The first bytes of a ``torch.save`` archive (a zip archive)."""
HEAD_BYTES = 16
"""Enough first bytes of a payload to tell its format."""


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
    head = _read_head(source, HEAD_BYTES)
    _check_head(head, describe)
    if not head.startswith(ZIP_MAGIC):
        return load_state_from_memory(_payload_memory(source, mmap), map_location, describe)
    placement = _Placement(map_location)
    with _blaming_the_payload(placement, describe):
        return torch.load(source, map_location=placement.map_location, weights_only=True, mmap=mmap)


def _payload_memory(source: Any, mmap: bool) -> Any:
    """The bytes of the payload ``source`` as writable memory of this process: the file
    mapped copy-on-write (``mmap`` and a path), else read into private memory."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if mmap:
                return mmap_module.mmap(file.fileno(), size, access=mmap_module.ACCESS_COPY)
            return _read_into_private_memory(file, size)
    start = source.tell()
    size = source.seek(0, os.SEEK_END) - start
    source.seek(start)
    return _read_into_private_memory(source, size)


def _read_into_private_memory(file: BinaryIO, size: int) -> Any:
    """The next ``size`` bytes of ``file`` in :func:`~dacapo_store.payload_memory.payload_memory`.

    Raises:
        OSError: the file ends before ``size`` bytes.
    """
    memory = payload_memory(size)
    view = memoryview(memory)
    try:
        done = 0
        while done < size:
            count = file.readinto(view[done:])
            if not count:
                raise OSError(f"the payload file ended after {done} of {size} bytes")
            done += count
    finally:
        view.release()
    return memory


def _check_head(head: bytes, describe: str) -> None:
    """Refuse a payload whose first bytes are neither a zip archive's, the safetensors layout's
    nor a flat v1 payload's, before anything parses it.

    Raises:
        CorruptCheckpointError: ``head`` starts like none of them.
    """
    if not (head.startswith(ZIP_MAGIC) or safetensors_layout.is_safetensors(head) or flat_format.is_flat(head)):
        raise CorruptCheckpointError(
            f"{describe}: refused to load the payload, it is neither a torch archive nor a "
            f"safetensors or flat payload (it starts with {head!r}; torch.save writes "
            f"{ZIP_MAGIC!r}, safetensors a header length and '{{', dacapo-store 0.5 {flat_format.MAGIC!r})"
        )


@contextmanager
def _blaming_the_payload(placement: _Placement, describe: str) -> Iterator[None]:
    """Turn any error torch raises while reading a payload into CorruptCheckpointError, except
    running out of memory, I/O errors and errors in placing a storage (see :func:`load_state`)."""
    try:
        yield
    except (MemoryError, OSError, torch.OutOfMemoryError):
        raise  # not the payload's content (CorruptCheckpointError is an OSError: kept as it is)
    except Exception as error:
        if placement.failed:
            raise
        raise CorruptCheckpointError(
            f"{describe}: refused to load the payload, it is not a plain torch state dict "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from error


class _MemoryFile(io.RawIOBase):
    """A read-only, seekable file over a memoryview (what torch's archive reader reads)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        count = max(0, min(len(target), len(self._view) - self._position))
        target[:count] = self._view[self._position : self._position + count]
        self._position += count
        return count


def load_state_from_memory(memory: Any, map_location: Any, describe: str) -> Any:
    """Load a payload held in writable memory (an ``mmap``, a ``bytearray`` or a memoryview of
    them, which the caller gives up), weights only, as ``torch.load`` would load it from a file.

    Tensors of a safetensors-layout or flat payload loaded to the CPU are views of ``memory``:
    nothing is copied, and ``memory`` lives as long as any of them. A ``torch.save`` archive
    (written only for values the layout cannot describe, and by 0.5.0) is read by the public
    ``torch.load(weights_only=True)`` from a read-only file over ``memory``, which copies each
    tensor out of it.

    Raises:
        as :func:`load_state`.
    """
    view = memoryview(memory).cast("B")
    head = bytes(view[:HEAD_BYTES])
    _check_head(head, describe)
    placement = _Placement(map_location)
    with _blaming_the_payload(placement, describe):
        restore = None if placement.is_meta else placement.map_location
        if flat_format.is_flat(head):
            return flat_format.load(memory, restore)
        if not head.startswith(ZIP_MAGIC):
            return safetensors_layout.load(memory, restore)
        return torch.load(_MemoryFile(view), map_location=placement.map_location, weights_only=True)


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
        self.is_meta = (isinstance(map_location, str) and map_location == "meta") or (
            isinstance(map_location, torch.device) and map_location.type == "meta"
        )
        self.map_location = map_location if self.is_meta else self._restore

    def _restore(self, storage: Any, location: str) -> Any:
        try:
            return self._place(storage, location)
        except BaseException:
            self.failed = True
            raise

    def _place(self, storage: Any, location: str) -> Any:
        """``torch.load``'s placement for each kind of ``map_location``."""
        map_location = self._map_location
        if location == "cpu" and (map_location is None or map_location == "cpu"):
            return storage  # what default_restore_location does, without its lookups
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
