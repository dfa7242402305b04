"""Fault injection helpers: make a phase of a write or a remove fail, by raising or by killing
the process, and the invariants every fault must keep."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, NoReturn

import pytest

from dacapo_store import CheckpointNotFoundError, WeightsStore
from dacapo_store.serialization import HashingWriter

from .conftest import Backend, assert_all_verify, make_weights

RUN = "faulty"
BEFORE = (1, 2)
TARGET = 3
KILLED_EXIT_CODE = 77

has_gc = pytest.mark.skipif(
    not hasattr(WeightsStore, "collect_garbage"), reason="WeightsStore.collect_garbage (issue 4) missing"
)


class InjectedFault(RuntimeError):
    """The failure the tests inject."""


def raise_fault(message: str) -> NoReturn:
    raise InjectedFault(message)


def kill(message: str) -> NoReturn:
    """Die at once, as a killed process does: no clean-up, no ``finally``, no ``atexit``."""
    os._exit(KILLED_EXIT_CODE)


def fail_after_bytes(limit: int, fault: Callable[[str], NoReturn] = raise_fault) -> Callable[..., Any]:
    """A replacement for ``HashingWriter.__init__`` whose sink (the backend's payload storage)
    raises once ``limit`` bytes of the upload went through it."""
    original = HashingWriter.__init__
    written = 0

    def init(self: HashingWriter, sink: Callable[[Any], object], *args: Any, **kwargs: Any) -> None:
        def failing_sink(data: Any) -> object:
            nonlocal written
            if written + memoryview(data).nbytes > limit:
                fault(f"payload storage failed after {written} bytes")
            written += memoryview(data).nbytes
            return sink(data)

        original(self, failing_sink, *args, **kwargs)

    return init


def fail_on_call(
    original: Callable[..., Any], call: int = 1, after: bool = False, fault: Callable[[str], NoReturn] = raise_fault
) -> Callable[..., Any]:
    """Wrap a bound method so that its ``call``-th call raises (after running, if ``after``)."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call:
            if after:
                original(*args, **kwargs)
            fault(f"{original.__name__} failed (call {calls}, after={after})")
        return original(*args, **kwargs)

    return wrapper


def seed(backend: Backend) -> None:
    for iteration in BEFORE:
        backend.weights.put_weights(RUN, iteration, make_weights(iteration))


def model_part_size(store: WeightsStore) -> int:
    return store.checkpoint_info(RUN, BEFORE[0]).parts["model"].size


def collect_garbage(backend: Backend) -> None:
    """Run gc as an operator would, long after the failure, and check it reclaimed everything."""
    store = backend.weights
    before = (backend.payloads(), backend.pending())
    store.collect_garbage(older_than=3600.0, dry_run=True, now=time.time() + 7200.0)
    assert (backend.payloads(), backend.pending()) == before, "a dry run deleted something"
    store.collect_garbage(older_than=3600.0, now=time.time() + 7200.0)
    backend.assert_clean()


def assert_unharmed(backend: Backend, target_stored: bool = False) -> None:
    """The invariants every fault must keep."""
    store = backend.weights
    expected = [*BEFORE, TARGET] if target_stored else list(BEFORE)
    assert [info.iteration for info in store.list_checkpoints(RUN)] == expected
    assert store.latest_iteration(RUN) == max(expected)
    if not target_stored:
        with pytest.raises(CheckpointNotFoundError, match=rf"checkpoint {TARGET} of run '{RUN}'"):
            store.retrieve_weights(RUN, TARGET)
    assert assert_all_verify(store) == len(expected)
