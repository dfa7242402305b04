"""Helper threads for work that one core does well below the machine's bandwidth: copying a
background store's snapshot (:mod:`~dacapo_store.background`) and reading a payload file into
memory (:mod:`~dacapo_store.local.payload_file`). Both spend their time in code that releases
the GIL (torch's copies, ``os.preadv``).

One pool per process, made on first use (a forked child, where the parent's threads do not
exist, makes its own), of :data:`MAX_HELPER_THREADS` ``- 1`` threads: the calling thread always
does a share of the work itself. No task on the pool waits for another task, so work queued
behind other work is delayed, never deadlocked; callers cancel what is still queued when they
can do it themselves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

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
        The futures of the tasks that were queued, and the tasks that could not be: no thread
        could be started for them (at interpreter shutdown, in an ``atexit`` handler, or when
        the system refuses a new thread). The caller runs those itself. Every task runs at most
        once, even where the pool had queued it before it failed to start a thread for it.
    """
    once = [_RunOnce(task) for task in tasks]
    futures: list[Future] = []
    try:
        pool = _process_pool()
        for task in once:
            futures.append(pool.submit(task))
    except RuntimeError:  # "cannot schedule new futures after interpreter shutdown", "can't start new thread"
        return futures, list(once[len(futures) :])
    return futures, []


def wait_for_all(futures: Sequence[Future]) -> None:
    """Wait until every one of ``futures`` is done, even through interrupts (a Ctrl-C while
    waiting is raised once all are done: a helper may be writing into memory that its caller
    is about to give up).

    Raises:
        the first interrupt (``KeyboardInterrupt``...) that came while waiting, after the wait;
        an ordinary exception of the wait itself at once.
    """
    _through_interrupts(lambda: wait(futures))


def _through_interrupts(waiting: Callable[[], object]) -> None:
    """Call ``waiting`` until it returns, again after each interrupt (an exception that is not
    an ``Exception``); then raise the first interrupt, if any."""
    interrupted: BaseException | None = None
    while True:
        try:
            waiting()
            break
        except Exception:
            raise
        except BaseException as error:
            interrupted = interrupted or error
    if interrupted is not None:
        raise interrupted


class _RunOnce:
    """A task that runs on its first call only; a later call waits until that run is done and
    raises its error. (A task the pool queued before it failed to start a thread for it runs
    either on a pool thread or on the caller, whichever claims it first, and the caller's call
    returns only once it has run.)"""

    def __init__(self, task: Callable[[], None]) -> None:
        self._task = task
        self._claimed = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._error: BaseException | None = None

    def __call__(self) -> None:
        with self._lock:
            claimed, self._claimed = self._claimed, True
        if claimed:
            _through_interrupts(self._done.wait)
            if self._error is not None:
                raise self._error
            return
        try:
            self._task()
        except BaseException as error:
            self._error = error
            raise
        finally:
            self._done.set()


def _process_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(MAX_HELPER_THREADS - 1, thread_name_prefix="dacapo-store-helper"))
        return _pool[1]


def _reset_in_child() -> None:
    """In a forked child: the lock may have been held by a parent thread that does not exist here."""
    global _pool_lock
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
