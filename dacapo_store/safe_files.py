"""Opening a file a user names, safely: regular files only, read no further than their size.

``open("/dev/zero").read()`` never ends, opening a FIFO blocks until a writer comes, and a file
that keeps growing can be read forever. :func:`open_regular_file` opens without blocking,
checks what it opened (``fstat`` on the descriptor, so nothing can be swapped in between) and
returns a reader bounded by the size the file had when it was opened.
"""

from __future__ import annotations

import io
import errno
import os
import stat
from typing import BinaryIO

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename or unlink in directory ``path`` durable (raises OSError)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_regular_file(path: str | os.PathLike, max_bytes: int | None = None) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file of at most ``max_bytes``.

    The open does not block (``O_NONBLOCK``: a FIFO with no writer is refused, not waited for)
    and follows symbolic links; the check is made on the opened descriptor. The returned file
    reads at most the size the file had when it was opened (EOF after that, even if it grows);
    ``fileno()`` gives the descriptor, e.g. for :func:`~dacapo_store.serialization.fd_path`.

    Args:
        path: the file.
        max_bytes: the largest size accepted (``None``: any).

    Returns:
        A buffered, seekable binary reader; close it (or use it in a ``with`` block).

    Raises:
        ValueError: ``path`` is not a regular file (naming what it is), or is larger than
            ``max_bytes``.
        OSError: it cannot be opened (``FileNotFoundError``, ``PermissionError``, ...).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
            raise ValueError(f"{os.fspath(path)} is {kind}: only a regular file can be read")
        if max_bytes is not None and info.st_size > max_bytes:
            raise ValueError(
                f"{os.fspath(path)} has {info.st_size} bytes, more than the {max_bytes} accepted"
            )
        os.set_blocking(fd, True)
        return io.BufferedReader(_BoundedFile(fd, info.st_size))
    except BaseException:
        os.close(fd)
        raise


class _BoundedFile(io.RawIOBase):
    """A raw, seekable reader of descriptor ``fd`` that ends at byte ``size`` (and closes ``fd``)."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd = fd
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        wanted = min(len(buffer), self._size - self._position)
        if wanted <= 0:
            return 0
        data = os.pread(self._fd, wanted, self._position)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        if base + offset < 0:  # as a real file does (zipfile relies on it for tiny files)
            raise OSError(errno.EINVAL, f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
