"""The helper thread pool: tasks that run once, and waits that an interrupt cannot cut short."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dacapo_store import helper_threads


def test_an_interrupt_while_waiting_comes_out_only_once_every_task_is_done(monkeypatch) -> None:
    release = threading.Event()
    task = helper_threads._process_pool().submit(release.wait, 60)
    real_wait = helper_threads.wait
    interrupts: list[bool] = []

    def interrupted_wait(futures):
        if not interrupts:  # Ctrl-C while waiting; the task is still running
            interrupts.append(task.done())
            release.set()
            raise KeyboardInterrupt
        return real_wait(futures)

    monkeypatch.setattr(helper_threads, "wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        helper_threads.wait_for_all([task])
    assert interrupts == [False] and task.done()


def test_a_task_queued_by_a_pool_that_then_failed_to_start_a_thread_runs_once(monkeypatch) -> None:
    """ThreadPoolExecutor.submit queues the task before it starts a thread; when that fails
    ("can't start new thread"), the caller runs the task, and the queued copy must not run it
    again later (a snapshot copied twice would copy tensors training changed meanwhile)."""
    real_pool = ThreadPoolExecutor(1)
    queued: list = []

    class FailingPool:
        def submit(self, task):
            if queued:
                queued.append(task)
                real_pool.submit(lambda: release.wait(60) and task())  # runs after the caller
                raise RuntimeError("can't start new thread")
            queued.append(task)
            return real_pool.submit(task)

    release = threading.Event()
    runs: list[int] = []
    monkeypatch.setattr(helper_threads, "_process_pool", lambda: FailingPool())
    futures, left = helper_threads.submit([lambda: runs.append(1), lambda: runs.append(2)])
    assert len(futures) == 1 and len(left) == 1
    for task in left:
        task()
    futures[0].result(timeout=60)
    release.set()
    real_pool.shutdown(wait=True)
    assert sorted(runs) == [1, 2]
