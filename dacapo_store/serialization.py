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
import os
import pickle
import zipfile
from typing import Any, Callable

import torch

from .errors import CorruptCheckpointError
from .records import PartInfo

HEARTBEAT_EVERY_BYTES = 64 * 1024 * 1024
HASH_BLOCK_BYTES = 8 * 1024 * 1024


class HashingWriter:
    """A write-only file object that hashes and counts what it passes to ``sink``.

    ``heartbeat`` (optional) is called every :data:`HEARTBEAT_EVERY_BYTES` written, so a long
    upload can show it is alive.
    """

    def __init__(
        self, sink: Callable[[Any], object], heartbeat: Callable[[], None] | None = None
    ) -> None:
        self._sink = sink
        self._heartbeat = heartbeat
        self._hash = hashlib.sha256()
        self._since_heartbeat = 0
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
        self._since_heartbeat += len(view)
        if self._heartbeat is not None and self._since_heartbeat >= HEARTBEAT_EVERY_BYTES:
            self._since_heartbeat = 0
            self._heartbeat()

    def flush(self) -> None:
        """Nothing to do: the sink owns buffering (``torch.save`` requires the method)."""

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def serialize_state(
    state: Any,
    sink: Callable[[Any], object],
    location: str,
    heartbeat: Callable[[], None] | None = None,
) -> PartInfo:
    """Stream ``torch.save(state)`` into ``sink`` and return the part's size and digest."""
    writer = HashingWriter(sink, heartbeat)
    try:
        torch.save(state, writer)
    except BaseException:
        if writer.error is not None:
            raise writer.error from None
        raise
    return PartInfo(location=location, size=writer.size, sha256=writer.hexdigest())


def verify_bytes(data: Any, expected: PartInfo, describe: str) -> None:
    """Check ``data`` against the recorded size and sha256.

    Raises:
        CorruptCheckpointError: naming ``describe`` (the run, iteration and part).
    """
    view = memoryview(data)
    if view.nbytes != expected.size:
        raise CorruptCheckpointError(
            f"{describe}: stored payload has {view.nbytes} bytes, the catalog recorded {expected.size}"
        )
    digest = hashlib.sha256(view).hexdigest()
    if digest != expected.sha256:
        raise CorruptCheckpointError(
            f"{describe}: sha256 mismatch (stored data {digest[:16]}..., "
            f"catalog {expected.sha256[:16]}...): the payload is corrupt"
        )


def verify_file(path: str | os.PathLike, expected: PartInfo, describe: str) -> None:
    """Check the file at ``path`` against the recorded size and sha256, reading it in blocks.

    Raises:
        CorruptCheckpointError: the file is missing, has the wrong size or the wrong digest.
    """
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size != expected.size:
                raise CorruptCheckpointError(
                    f"{describe}: payload file has {size} bytes, the catalog recorded {expected.size}"
                )
            digest = hashlib.file_digest(file, "sha256").hexdigest()
    except FileNotFoundError as error:
        raise CorruptCheckpointError(f"{describe}: payload file {path} is missing") from error
    if digest != expected.sha256:
        raise CorruptCheckpointError(
            f"{describe}: sha256 mismatch (file {digest[:16]}..., catalog "
            f"{expected.sha256[:16]}...): the payload is corrupt"
        )


def load_state(source: Any, map_location: Any, describe: str, mmap: bool = False) -> Any:
    """``torch.load`` a verified payload (a file path or a bytes-like object), weights only.

    Raises:
        CorruptCheckpointError: the payload is not a plain state dict (e.g. a pickle that would
            run code): it is refused and nothing of it is executed.
    """
    if not isinstance(source, (str, os.PathLike)):
        source = io.BytesIO(source)
    try:
        return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as error:
        raise CorruptCheckpointError(
            f"{describe}: refused to load the payload, it is not a plain torch state dict "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from error
