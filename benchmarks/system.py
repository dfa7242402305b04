"""The machine around a benchmark: a cold page cache, memory given back to the system.

Stdlib only: the benchmark worker imports it beside itself, under any dacapo-store version."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
from collections.abc import Iterable


def drop_from_page_cache(paths: Iterable[str | os.PathLike]) -> None:
    """Evict the files at ``paths`` from the page cache (``posix_fadvise(DONTNEED)`` after an
    ``fsync``, so no page is dirty), so that the next read comes from the disk. A no-op where
    ``posix_fadvise`` does not exist."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def can_drop_page_cache() -> bool:
    """Whether :func:`drop_from_page_cache` works here."""
    return hasattr(os, "posix_fadvise")


def resident_bytes(paths: Iterable[str | os.PathLike]) -> int | None:
    """Bytes of the files at ``paths`` in the page cache, as ``fincore`` reports them (``None``
    where ``fincore`` is not installed)."""
    if shutil.which("fincore") is None:
        return None
    output = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", *map(os.fspath, paths)],
        check=True, capture_output=True, text=True,
    ).stdout
    return sum(int(line) for line in output.split())


def _malloc_trim() -> ctypes._CFuncPtr | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> bool:
    """Return the memory this process has freed to the system (glibc's ``malloc_trim``), so the
    next allocations fault in fresh pages as in a new process instead of reusing pages freed by
    an earlier run; returns whether it could (not outside glibc)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
