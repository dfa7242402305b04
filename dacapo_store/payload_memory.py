"""The private memory a load reads a payload into, and its reuse by the next load.

A load copies a payload once, into memory of this process (:func:`payload_memory`), and builds
the tensors as views of it. Fresh memory costs a page fault and the kernel zeroing every page
before the copy can land (here 13 of the 30 ms it takes to read a 100 MB payload from the page
cache); ``torch.load`` usually pays nothing of it in a long-lived process, because glibc hands
its storages the heap memory that earlier loads freed.

So when the last tensor of a load is gone, its memory is kept as a *spare* for
:data:`SPARE_SECONDS`, and a load of a payload that fits the same number of huge pages in that
time reads into it instead of into fresh pages: a validation loop or a server loading one
checkpoint after the other pays the page faults once. After that time, or at
:func:`release_spare_memory`, the spares go back to the system. A process that keeps its
loaded tensors (a resumed optimizer's state) keeps no spare: the memory is in use.

Reuse is safe by construction: the tensors hold the memoryview that :func:`payload_memory`
returned, and only once that memoryview is gone (no tensor, no other reference to it, no view
made from it) does its memory become a spare. Keeping a spare is best effort: memory freed by the
cycle collector (whose finalizers run before it clears references), or while another thread
holds this module's lock, simply goes back to the system.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time
import weakref

SPARE_SECONDS = 2.0
"""How long memory freed by a load's tensors is kept for the next load."""
HUGE_PAGE_BYTES = 2 * 1024 * 1024
"""Payload memory is allocated in multiples of this (a transparent huge page on x86-64 and
arm64), so that payloads of slightly different sizes can reuse each other's memory."""
REUSED_FROM_BYTES = HUGE_PAGE_BYTES
"""Payloads smaller than this get fresh memory and leave no spare (nothing worth keeping)."""

_spares: dict[int, list[tuple[float, mmap.mmap | bytearray]]] = {}
"""Spare mappings by size: (when it became spare, the mapping), oldest first."""
_lock = threading.Lock()
_reaper: threading.Timer | None = None


def private_memory(size: int) -> mmap.mmap | bytearray:
    """``size`` bytes of new writable memory private to this process: an anonymous private
    mapping, in transparent huge pages where the system offers them (far fewer page faults than
    the allocator's fresh 4 KiB pages), or a ``bytearray`` where anonymous private mappings do
    not exist (Windows) or ``size`` is 0."""
    private = getattr(mmap, "MAP_PRIVATE", None)
    anonymous = getattr(mmap, "MAP_ANONYMOUS", None)
    if size == 0 or private is None or anonymous is None:
        return bytearray(size)
    memory = mmap.mmap(-1, size, flags=private | anonymous)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)
    return memory


def payload_memory(size: int) -> memoryview:
    """``size`` bytes of writable private memory for a payload to be read into: a spare left by
    an earlier load if one fits (its old bytes still in it: the caller overwrites all ``size``),
    else new memory (:func:`private_memory`).

    The memory becomes a spare when the returned memoryview is gone: build tensors on it, not
    on a memoryview made from it (a slice or cast of it points into the memory without keeping
    it alive; memory that such a view still points into is never reused, only given back).
    """
    if size < REUSED_FROM_BYTES:
        return memoryview(private_memory(size))
    mapped = -(-size // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    with _lock:
        spares = _spares.get(mapped)
        memory = spares.pop()[1] if spares else None
        if spares == []:
            del _spares[mapped]
    if memory is None:
        memory = private_memory(mapped)
    view = memoryview(memory)[:size]
    weakref.finalize(view, _keep_spare, memory).atexit = False
    return view


def release_spare_memory() -> int:
    """Give every spare back to the system now; returns how many bytes that was."""
    with _lock:
        released = [memory for spares in _spares.values() for _, memory in spares]
        _spares.clear()
    return sum(len(memory) for memory in released)


def _keep_spare(memory: mmap.mmap | bytearray) -> None:
    """Keep ``memory`` as a spare (called by the finalizer of the view :func:`payload_memory`
    returned) unless anything else still refers to it: a memoryview made from that view (a
    slice, a cast) points into the memory without keeping the view alive, so such memory goes
    back to the system instead. Never waits for the lock: this runs wherever the last tensor was
    freed, possibly inside this module's own locked section (a garbage collection); if the lock
    is taken, the memory goes back to the system too."""
    global _reaper
    if sys.getrefcount(memory) > _UNSHARED_REFERENCES:
        return  # a memoryview made from the returned one (a helper's slice) still points into it
    if not _lock.acquire(blocking=False):
        return
    try:
        _spares.setdefault(len(memory), []).append((time.monotonic(), memory))
        if _reaper is None or not _reaper.is_alive():
            _reaper = _start_reaper(SPARE_SECONDS)
    finally:
        _lock.release()


def _unshared_references() -> int:
    """What ``sys.getrefcount`` says of the memory in :func:`_keep_spare` when nothing but the
    finalizer refers to it any more (measured through the same finalizer call, on this Python)."""
    seen: list[int] = []

    def probe(memory: bytearray) -> None:
        seen.append(sys.getrefcount(memory))

    memory = bytearray(1)
    view = memoryview(memory)[:1]
    weakref.finalize(view, probe, memory).atexit = False
    del memory, view
    return seen[0]


_UNSHARED_REFERENCES = _unshared_references()


def _start_reaper(delay: float) -> threading.Timer | None:
    """A daemon timer that runs :func:`_reap` after ``delay`` seconds (``None`` once the
    interpreter shuts down and starts no threads: the spares then go at exit)."""
    timer = threading.Timer(delay, _reap)
    timer.daemon = True
    try:
        timer.start()
    except RuntimeError:
        return None
    return timer


def _reap() -> None:
    """Give back the spares older than :data:`SPARE_SECONDS`; wait for the others."""
    global _reaper
    now = time.monotonic()
    with _lock:
        for size in list(_spares):
            _spares[size] = [(since, memory) for since, memory in _spares[size] if now - since < SPARE_SECONDS]
            if not _spares[size]:
                del _spares[size]
        oldest = min((since for spares in _spares.values() for since, _ in spares), default=None)
        _reaper = None if oldest is None else _start_reaper(oldest + SPARE_SECONDS - now)


def _forget_spares_in_child() -> None:
    """In a forked child: the reaper thread does not exist there, so its spares go now."""
    global _lock, _reaper
    _lock = threading.Lock()
    _reaper = None
    _spares.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_spares_in_child)
