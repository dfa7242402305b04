"""Anonymous in-memory files that ``torch.load(mmap=True)`` can map by path.

A payload downloaded into one is loaded without a second copy: the tensors ``torch.load``
returns are views of the file's pages, so loading peaks at about the payload's size instead of
twice it. The pages live until the file is closed and no tensor maps them any more.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from typing import Any

_FD_DIRECTORY = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"


def _anonymous_fd() -> int:
    """A file descriptor of a new, nameless file: a memfd on Linux, else an unlinked temp file."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("dacapo-store-payload", os.MFD_CLOEXEC)
    return os.dup(tempfile.TemporaryFile().fileno())


class MemoryFile(os.PathLike):
    """A nameless file of exactly ``size`` bytes, filled with :meth:`write_at`, readable by path.

    ``os.fspath(file)`` is a path that opens the same file (``/proc/self/fd/N``) while it is
    open. The descriptor is closed by :meth:`close`, or when the object is garbage collected;
    mappings made from it (tensors) stay valid after that.

    Raises:
        ValueError: ``size`` is not positive.
    """

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"a memory file needs a positive size, got {size}")
        self.size = size
        self._fd = _anonymous_fd()
        self._finalizer = weakref.finalize(self, os.close, self._fd)
        os.ftruncate(self._fd, size)
        self._path = f"{_FD_DIRECTORY}/{self._fd}"

    def __fspath__(self) -> str:
        return self._path

    def write_at(self, offset: int, data: Any) -> None:
        """Copy ``data`` (bytes-like) into the file at ``offset`` (the GIL is released)."""
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        self._finalizer()
