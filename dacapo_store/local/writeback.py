"""Starting the disk write of a payload file while it is still being serialized.

``fsync`` at the end of a write waits for every dirty page of the file to reach the disk. A
:class:`WritebackFile` asks the kernel to start writing each range out as soon as it is
written (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which neither waits for the write
nor drops the pages from the page cache), so the disk works while ``torch.save`` serializes
the rest and the final ``fsync`` has little left to wait for. Durability is unchanged: the
``fsync`` still decides. Where the call does not exist or a file system refuses it, writes go
on without it.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any, BinaryIO, Callable

logger = logging.getLogger(__name__)

WRITEBACK_BYTES = 1024 * 1024
"""Writeback is started for every this many bytes written."""

_SYNC_FILE_RANGE_WRITE = 2


def _find_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range``, or ``None`` where there is none (it is Linux's)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _find_sync_file_range()


class WritebackFile:
    """Wraps a buffered binary ``file`` open for writing; :meth:`write` starts the disk write
    of every ``WRITEBACK_BYTES`` written (see the module doc)."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._fd = file.fileno()
        self._written = 0
        self._started = 0
        self._enabled = _sync_file_range is not None

    def write(self, data: Any) -> int:
        """Write ``data`` (bytes-like); returns the number of bytes written."""
        count = self._file.write(data)
        self._written += count
        if self._enabled and self._written - self._started >= WRITEBACK_BYTES:
            self._file.flush()
            if _sync_file_range(self._fd, self._started, self._written - self._started, _SYNC_FILE_RANGE_WRITE) != 0:
                logger.debug("sync_file_range failed (errno %d); writing on without it", ctypes.get_errno())
                self._enabled = False
            self._started = self._written
        return count
