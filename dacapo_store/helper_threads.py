"""Helper threads for work that one core does well below the machine's bandwidth: copying a
background store's snapshot (:mod:`~dacapo_store.background`) and reading a payload file into
memory (:mod:`~dacapo_store.local.payload_file`). Both spend their time in code that releases
the GIL (torch's copies, ``os.preadv``).

One pool per process, made on first use (a forked child, where the parent's threads do not
exist, makes its own), of :data:`MAX_HELPER_THREADS` ``- 1`` threads: the calling thread always
does a share of the work itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

MAX_HELPER_THREADS = 4
"""Beyond this many threads, memory bandwidth rather than CPU limits a copy."""

_pool: tuple[int, ThreadPoolExecutor] | None = None
"""The process id that made the pool, and the pool."""
_pool_lock = threading.Lock()


def thread_count() -> int:
    """How many threads share such work, the caller's included: the CPUs this process may run
    on, at most :data:`MAX_HELPER_THREADS`."""
    available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return max(1, min(MAX_HELPER_THREADS, len(available)))


def submit(tasks: Sequence[Callable[[], None]]) -> tuple[list[Future], list[Callable[[], None]]]:
    """Start each of ``tasks`` on a helper thread.

    Returns:
        The futures of the tasks that started, and the tasks that could not start, because the
        interpreter is shutting down (an ``atexit`` handler): the caller runs those itself.
    """
    futures: list[Future] = []
    try:
        pool = _process_pool()
        for task in tasks:
            futures.append(pool.submit(task))
    except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
        return futures, list(tasks[len(futures) :])
    return futures, []


def _process_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(MAX_HELPER_THREADS - 1, thread_name_prefix="dacapo-store-helper"))
        return _pool[1]
