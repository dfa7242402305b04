"""Threads for one call's work that one core does well below the machine's bandwidth: copying a
background store's snapshot (:mod:`~dacapo_store.background`) and reading a payload file into
memory (:mod:`~dacapo_store.local.payload_file`). Both spend their time in code that releases
the GIL (torch's copies, ``os.preadv``).

Nothing here outlives its call: :func:`run_together` starts its threads when it is called and
joins them before it returns. No pool, no thread started ahead of need, no fork handlers: a
process that forks (a DataLoader starting its workers) has no thread of ours unless one of our
calls is running at that moment in another thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

MAX_HELPER_THREADS = 4
"""Beyond this many threads, memory bandwidth rather than CPU limits a copy."""


def thread_count() -> int:
    """How many threads share such work, the caller's included: the CPUs this process may run
    on, at most :data:`MAX_HELPER_THREADS`."""
    available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return max(1, min(MAX_HELPER_THREADS, len(available)))


def run_together(tasks: Sequence[Callable[[], None]], on_interrupt: Callable[[], None] | None = None) -> None:
    """Run ``tasks[0]`` on the calling thread and each other task on a thread started for it
    now; return once every task is done. A thread that cannot be started (at interpreter
    shutdown, or when the system refuses one) leaves its task to the calling thread.

    An interrupt (``KeyboardInterrupt``...) while waiting calls ``on_interrupt`` (which should
    make the tasks stop early) and is raised once every task is done: a task may be writing into
    memory that the caller is about to give up.

    Raises:
        the first interrupt, else the calling thread's error, else the first error of the other
        tasks (in order); every task has finished by then.
    """
    errors: list[BaseException | None] = [None] * len(tasks)

    def run(index: int) -> None:
        try:
            tasks[index]()
        except BaseException as error:
            errors[index] = error

    threads: list[threading.Thread] = []
    left: list[int] = []
    for index in range(1, len(tasks)):
        thread = threading.Thread(target=run, args=(index,), name=f"dacapo-store-helper-{index}", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # "can't start new thread", or interpreter shutdown
            left.append(index)
            continue
        threads.append(thread)
    interrupted: BaseException | None = None
    for index in ([0] if tasks else []) + left:
        try:
            run(index)
        except BaseException as error:  # an interrupt between tasks
            interrupted = interrupted or error
    for thread in threads:
        while thread.is_alive():
            try:
                thread.join()
            except BaseException as error:
                if interrupted is None and on_interrupt is not None:
                    on_interrupt()
                interrupted = interrupted or error
    if interrupted is not None:
        raise interrupted
    for error in errors:
        if error is not None:
            raise error
