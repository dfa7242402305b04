"""The private memory a load reads a payload into, and what happens to it afterwards.

A load copies a payload once, into fresh memory of this process (:func:`payload_memory`), and
builds the tensors as views of it. That memory is never handed to another load: it lives as
long as anything views it (a tensor, a memoryview or a numpy array made from one), and when the
last of them is gone it is *retired*: its pages go back to the system at once, and its address
range stays reserved, inaccessible, while later loads get fresh memory elsewhere (the newest
retired range always, older ones up to :data:`RETIRED_LOADS` ranges and :data:`RETIRED_BYTES`
in all: a reserved range holds no pages but counts towards the process's address space, which
``ulimit -v`` caps on many clusters). A pointer that outlived its tensor (a numpy view taken before
``tensor.share_memory_()``, which moves the tensor's storage and frees the old one) then faults
instead of showing another checkpoint's values, as it could where the next load's memory landed
at the freed address (plain ``torch.load`` does that: glibc maps and unmaps large storages).

0.5.0 kept a finished load's memory for the next load, judged unused by a reference count that
such a view escaped; that reuse is gone, and :func:`release_spare_memory` stays one release as a
no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import threading
from collections import deque
from typing import Any

RETIRED_LOADS = 256
"""The most retired load memories that keep their address range reserved (no pages, one kernel
mapping each) before the oldest is unmapped."""
RETIRED_BYTES = 1 << 30
"""The most address space the retired ranges other than the newest keep reserved; beyond it
the oldest are unmapped."""

HUGE_PAGES_PAY = "300 MB read into fresh memory: 193 ms in 4 KiB pages, 67 ms in huge pages (2 cores)"
"""Why load memory asks for transparent huge pages (``MADV_HUGEPAGE``): the page faults and
zeroing of fresh memory dominate a warm ``retrieve_weights``. Where the kernel's THP ``defrag``
setting makes such requests compact memory synchronously, a fragmented node can stall an
allocation instead (``/sys/kernel/mm/transparent_hugepage/defrag``: ``defer+madvise`` or
``defer`` avoid that)."""

_retired: deque[mmap.mmap] = deque()
_retired_lock = threading.Lock()


def _load_mprotect() -> Any:
    try:
        mprotect = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).mprotect
    except (OSError, AttributeError):
        return None
    mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    mprotect.restype = ctypes.c_int
    return mprotect


_mprotect = _load_mprotect()


def private_memory(size: int) -> mmap.mmap | bytearray:
    """``size`` bytes of new writable zero-filled memory private to this process: an anonymous
    private mapping, or a ``bytearray`` where anonymous private mappings do not exist (Windows)
    or ``size`` is 0."""
    private = getattr(mmap, "MAP_PRIVATE", None)
    anonymous = getattr(mmap, "MAP_ANONYMOUS", None)
    if size == 0 or private is None or anonymous is None:
        return bytearray(size)
    memory = mmap.mmap(-1, size, flags=private | anonymous)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)  # measured: see HUGE_PAGES_PAY
    return memory


def payload_memory(size: int) -> memoryview:
    """``size`` bytes of new writable private memory for a payload to be read into, never used
    by anything else before or after: retired (see the module doc) once neither the returned
    memoryview nor anything made from it (views, slices, tensors built on it) exists any more."""
    memory = private_memory(size)
    if not isinstance(memory, mmap.mmap):
        return memoryview(memory)
    exported = (ctypes.c_ubyte * size).from_buffer(memory)
    exported._retire_on_death = _Retirement(memory, ctypes.addressof(exported), size)
    return memoryview(exported).cast("B")


class _Retirement:
    """Retires a load's mapping when the buffer that every view of it holds dies."""

    def __init__(self, memory: mmap.mmap, address: int, size: int) -> None:
        self._memory, self._address, self._size = memory, address, size

    def __del__(self) -> None:
        _retire(self._memory, self._address, self._size)


def _retire(memory: mmap.mmap, address: int, size: int) -> None:
    """Give ``memory``'s pages back, make its range inaccessible, and keep the range reserved
    (the newest always, older ones within :data:`RETIRED_LOADS` and :data:`RETIRED_BYTES`);
    unmap the oldest beyond that. Best effort where the system lacks ``madvise``/``mprotect``:
    then the memory is simply freed."""
    if _mprotect is None or not hasattr(mmap, "MADV_DONTNEED") or _mprotect(address, size, 0) != 0:
        return  # PROT_NONE refused (or unavailable): freed as any memory is
    memory.madvise(mmap.MADV_DONTNEED)
    unmapped = []
    with _retired_lock:
        _retired.append(memory)
        older_bytes = sum(len(retired) for retired in _retired) - len(memory)
        while len(_retired) > 1 and (len(_retired) > RETIRED_LOADS or older_bytes > RETIRED_BYTES):
            oldest = _retired.popleft()
            older_bytes -= len(oldest)
            unmapped.append(oldest)
    for oldest in unmapped:
        oldest.close()


def release_spare_memory() -> int:
    """Deprecated no-op, kept for one release (public in 0.5.0): loads keep no spare memory any
    more, so there is nothing to give back. Returns 0."""
    return 0
