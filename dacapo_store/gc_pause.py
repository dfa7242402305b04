"""Pausing Python's cyclic garbage collector while a payload's structure is built or parsed.

Building or parsing the structure of a state dict makes one container per tensor, none of them
garbage, yet each collection those allocations trigger walks every object of the process (a few
hundred milliseconds in a big program, per checkpoint of 20,000 tensors). Threads share the
pause: the collector is enabled again (if it was) when the last one leaves, and a child forked
meanwhile gets it back as soon as its own thread's pauses end.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_pausers = 0
_lock = threading.Lock()
_was_enabled = False
_pauses_of_this_thread = threading.local()


def _reset_in_child() -> None:
    """In a forked child only the forking thread exists: the collector stays paused only as
    long as that thread's own pauses last (enabled again at once if it had none)."""
    global _pausers, _lock
    _pausers, _lock = getattr(_pauses_of_this_thread, "depth", 0), threading.Lock()
    if _pausers == 0 and _was_enabled:
        gc.enable()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector disabled inside the block (see the module doc)."""
    global _pausers, _was_enabled
    with _lock:
        if _pausers == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pausers += 1
    _pauses_of_this_thread.depth = getattr(_pauses_of_this_thread, "depth", 0) + 1
    try:
        yield
    finally:
        _pauses_of_this_thread.depth -= 1
        with _lock:
            _pausers -= 1
            if _pausers == 0 and _was_enabled:
                gc.enable()
