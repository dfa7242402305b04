"""Helper threads are scoped to their call: started when needed, joined before it returns."""

from __future__ import annotations

import threading

import pytest

from dacapo_store import helper_threads


def test_every_task_runs_once_and_no_thread_outlives_the_call() -> None:
    before = set(threading.enumerate())
    ran: list[int] = []
    lock = threading.Lock()

    def task(index):
        with lock:
            ran.append(index)

    helper_threads.run_together([lambda index=index: task(index) for index in range(4)])
    assert sorted(ran) == [0, 1, 2, 3]
    assert set(threading.enumerate()) == before


def test_importing_starts_no_thread_and_registers_no_fork_handler() -> None:
    import subprocess
    import sys

    code = (
        "import os, threading; calls = []\n"
        "real = os.register_at_fork; os.register_at_fork = lambda **kw: calls.append(kw)\n"
        "import dacapo_store.helper_threads, dacapo_store.background, dacapo_store.local.payload_file\n"
        "print(threading.active_count(), any('dacapo_store' in repr(c) for c in calls))"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert child.stdout.split() == ["1", "False"]


def test_a_thread_that_cannot_start_leaves_its_task_to_the_caller(monkeypatch) -> None:
    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    ran: list[str] = []
    helper_threads.run_together([lambda: ran.append("first"), lambda: ran.append("second")])
    assert ran == ["first", "second"]


def test_errors_come_out_once_every_task_is_done_callers_first() -> None:
    release = threading.Event()
    done: list[str] = []

    def caller():
        raise ValueError("caller")

    def helper():
        release.wait(60)
        done.append("helper")
        raise OSError("helper")

    def releaser():
        release.set()

    with pytest.raises(ValueError, match="caller"):
        helper_threads.run_together([caller, helper, releaser])
    assert done == ["helper"]


def test_an_interrupt_while_joining_stops_the_tasks_and_comes_out_once_they_are_done(monkeypatch) -> None:
    stop = threading.Event()
    finished: list[bool] = []
    real_join = threading.Thread.join
    interrupts: list[bool] = []

    def interrupted_join(self, timeout=None):
        if not interrupts:
            interrupts.append(True)
            raise KeyboardInterrupt
        return real_join(self, timeout)

    def helper():
        stop.wait(60)
        finished.append(stop.is_set())

    monkeypatch.setattr(threading.Thread, "join", interrupted_join)
    with pytest.raises(KeyboardInterrupt):
        helper_threads.run_together([lambda: None, helper], on_interrupt=stop.set)
    assert finished == [True]
