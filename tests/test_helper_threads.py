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


def test_when_the_pool_runs_a_task_first_the_callers_run_waits_for_it_and_gets_its_error() -> None:
    """The pool thread claimed the task (queued before the pool failed to start a thread): the
    caller's run returns only once that run is done, or the snapshot share would be unfinished."""
    started, release = threading.Event(), threading.Event()

    def share():
        started.set()
        assert release.wait(60)
        raise OSError("the share failed")

    once = helper_threads._RunOnce(share)
    pool = ThreadPoolExecutor(1)
    pool.submit(once)
    assert started.wait(60)
    outcome: list[BaseException] = []

    def caller():
        try:
            once()
        except BaseException as error:
            outcome.append(error)

    waiting = threading.Thread(target=caller)
    waiting.start()
    waiting.join(timeout=0.2)
    assert waiting.is_alive() and not outcome  # still waiting for the pool's run
    release.set()
    waiting.join(timeout=60)
    pool.shutdown(wait=True)
    assert [str(error) for error in outcome] == ["the share failed"]


def test_an_ordinary_error_of_the_wait_is_not_retried(monkeypatch) -> None:
    calls: list[int] = []

    def failing_wait(futures):
        calls.append(1)
        raise MemoryError

    monkeypatch.setattr(helper_threads, "wait", failing_wait)
    with pytest.raises(MemoryError):
        helper_threads.wait_for_all([])
    assert calls == [1]
