"""The local backend's payload store: one file per payload in the store's ``payloads``
directory, written to ``<location>.partial`` and renamed (see :mod:`dacapo_store.payload_store`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import CorruptCheckpointError
from ..payload_store import PARTIAL_SUFFIX, PayloadStore, Write
from ..records import PartInfo
from ..safe_files import fsync_directory
from .payload_file import load_payload_file, map_payload_file, verify_payload_file
from .writeback import WritebackFile

T = TypeVar("T")

_sync_data = getattr(os, "fdatasync", os.fsync)
"""Syncs a file's data and the metadata needed to read it back (its size), not its times."""


class FilePayloads(PayloadStore):
    """Payload files in ``directory`` (created by the first write). Each write starts its
    disk write as it goes (:mod:`~dacapo_store.local.writeback`); :meth:`make_durable` syncs
    each file's data once and the directory once. Loads read a file with several threads and
    hash as they go, or map it (``mmap``; see :func:`~dacapo_store.local.payload_file.load_payload_file`).

    ``map_for_copies``: whether :meth:`load_to_copy` maps the file (the fast path of
    ``load_weights``). Off on network filesystems, where another host's delete turns a mapped
    page's fault into ``SIGBUS``: there it reads the file, and a vanished file is an error.
    """

    def __init__(self, directory: Path, map_for_copies: bool = True) -> None:
        self.directory = directory
        self.map_for_copies = map_for_copies

    def path(self, location: str) -> Path:
        """The file of the payload at ``location``."""
        return self.directory / location

    def write(self, location: str, produce: Callable[[Write], T]) -> T:
        final = self.path(location)
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        self.directory.mkdir(exist_ok=True)  # the store's directory exists (the reservation made it)
        try:
            with open(partial, "wb") as file:
                result = produce(WritebackFile(file).write)
            os.replace(partial, final)  # made durable by make_durable before the commit
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return result

    def make_durable(self, locations: Iterable[str]) -> None:
        for location in locations:
            fd = os.open(self.path(location), os.O_RDONLY)
            try:
                _sync_data(fd)
            finally:
                os.close(fd)
        fsync_directory(self.directory)

    def read_into(self, location: str, memory: Any, where: str) -> None:
        path = self.path(location)
        try:
            file = open(path, "rb", buffering=0)
        except FileNotFoundError as error:
            raise CorruptCheckpointError(f"{where}: payload file {path} is missing") from error
        with file, memoryview(memory) as view:
            size = os.fstat(file.fileno()).st_size
            if size != len(view):
                raise CorruptCheckpointError(f"{where}: payload file {path} has {size} bytes, not {len(view)}")
            position = 0
            while position < len(view):
                count = file.readinto(view[position:])
                if not count:
                    raise CorruptCheckpointError(f"{where}: payload file {path} ended early")
                position += count

    def load(self, expected: PartInfo, map_location: Any, where: str, mmap: bool = False) -> Any:
        return load_payload_file(self.path(expected.location), expected, map_location, where, mmap)

    def load_to_copy(self, expected: PartInfo, where: str) -> Any:
        if not self.map_for_copies:
            return self.load(expected, "cpu", where)
        return map_payload_file(self.path(expected.location), expected, where)

    def verify(self, expected: PartInfo, where: str) -> None:
        verify_payload_file(self.path(expected.location), expected, where)

    def delete(self, name: str) -> bool:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def list(self) -> dict[str, int]:
        files: dict[str, int] = {}
        if not self.directory.is_dir():  # a read-only store that never held a checkpoint
            return files
        for entry in os.scandir(self.directory):
            try:
                files[entry.name] = entry.stat().st_size
            except FileNotFoundError:  # deleted since the listing
                pass
        return files
