"""Pausing Python's cyclic garbage collector while many objects that are not garbage are made.

Building a flat payload's header, parsing it, or walking a state dict into a background
snapshot makes one or more container objects per tensor, none of them garbage; each collection
that their making triggers would walk every object of the process (a few hundred milliseconds in
a big program, several times per walk of a state dict of many tensors).
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_gc_pausers = 0
_gc_lock = threading.Lock()
_gc_was_enabled = False
_gc_pauses_of_this_thread = threading.local()


def _reset_gc_pause_in_child() -> None:
    """In a forked child only the forking thread exists: the collector stays paused only as
    long as that thread's own pauses last (enabled again at once if it had none)."""
    global _gc_pausers, _gc_lock
    _gc_pausers, _gc_lock = getattr(_gc_pauses_of_this_thread, "depth", 0), threading.Lock()
    if _gc_pausers == 0 and _gc_was_enabled:
        gc.enable()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_gc_pause_in_child)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the ``with`` block. Threads share the pause: the
    collector is enabled again (if it was) when the last leaves."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    _gc_pauses_of_this_thread.depth = getattr(_gc_pauses_of_this_thread, "depth", 0) + 1
    try:
        yield
    finally:
        _gc_pauses_of_this_thread.depth -= 1
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()
