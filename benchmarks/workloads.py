"""What the benchmarks and performance tests store, and how they count queries."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch

MB = 1_000_000
TENSORS = 20


def model_state(size_bytes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A model state dict of about ``size_bytes`` (float32 tensors of equal size)."""
    generator = torch.Generator().manual_seed(seed)
    numel = max(1, size_bytes // 4 // TENSORS)
    return {f"layer{i}.weight": torch.randn(numel, generator=generator) for i in range(TENSORS)}


def adam_state(model: dict[str, torch.Tensor]) -> dict[str, Any]:
    """An Adam optimizer state dict for ``model``: two moments per parameter (2x the model)."""
    return {
        "state": {
            i: {"step": torch.tensor(10.0), "exp_avg": t.clone(), "exp_avg_sq": t.abs()}
            for i, t in enumerate(model.values())
        },
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": list(range(len(model)))}],
    }


def best_time(action: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None) -> float:
    """The fastest of ``repeat`` runs of ``action`` in seconds (``setup`` runs untimed before each)."""
    return best_times({"action": action}, repeat, setup)["action"]


def best_times(
    actions: dict[str, Callable[[], object]], repeat: int, setup: Callable[[], object] | None = None
) -> dict[str, float]:
    """The fastest of ``repeat`` runs of each action, in seconds, by name.

    The actions take turns (round after round, each round in a rotated order), so that a
    contender and its baseline meet the same machine: a slow spell of the disk or of a
    neighbour hits both, not whichever ran second. ``setup`` runs untimed before each run.
    """
    best = {name: float("inf") for name in actions}
    names = list(actions)
    for round_ in range(repeat):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            if setup is not None:
                setup()
            start = time.perf_counter()
            actions[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


@contextlib.contextmanager
def mongomock_find_spy() -> Iterator[Counter]:
    """Count ``find`` calls (queries; ``find_one`` goes through ``find``) per mongomock
    collection name. pymongo's command monitoring does not see mongomock, so ``find`` is wrapped."""
    import mongomock.collection

    calls: Counter = Counter()
    original = mongomock.collection.Collection.find

    def find(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[self.name] += 1
        return original(self, *args, **kwargs)

    mongomock.collection.Collection.find = find
    try:
        yield calls
    finally:
        mongomock.collection.Collection.find = original


@contextlib.contextmanager
def sqlite_statement_spy(catalog: Any) -> Iterator[list[str]]:
    """Record the SQL statements this thread's connection of ``catalog`` runs."""
    statements: list[str] = []
    connection = catalog.connection()
    connection.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        connection.set_trace_callback(None)


def queries_in(statements: list[str]) -> list[str]:
    """The ``SELECT`` statements among recorded SQL (pragmas and transaction control excluded)."""
    return [s for s in statements if s.lstrip().upper().startswith("SELECT")]
