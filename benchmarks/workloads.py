"""What the benchmarks and performance tests store, and how they count queries."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch

MB = 1_000_000
TENSORS = 20


def model_state(size_bytes: int, seed: int = 0, tensors: int = TENSORS) -> dict[str, torch.Tensor]:
    """A model state dict of about ``size_bytes`` (``tensors`` float32 tensors of equal size)."""
    generator = torch.Generator().manual_seed(seed)
    numel = max(1, size_bytes // 4 // tensors)
    return {f"layer{i}.weight": torch.randn(numel, generator=generator) for i in range(tensors)}


class TrainedModel(torch.nn.Module):
    """A model with the tensors of :func:`model_state` as parameters, and its Adam optimizer
    after one step (so the optimizer state holds two moments per parameter: 3x the model)."""

    def __init__(self, size_bytes: int, tensors: int = TENSORS, seed: int = 0) -> None:
        super().__init__()
        for name, tensor in model_state(size_bytes, seed, tensors).items():
            self.register_parameter(name.replace(".", "_"), torch.nn.Parameter(tensor))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        self.set_gradients()
        self.optimizer.step()

    def set_gradients(self) -> None:
        """Give every parameter a gradient (what a backward pass leaves before a step)."""
        for parameter in self.parameters():
            parameter.grad = torch.full_like(parameter, 1e-3)


def adam_state(model: dict[str, torch.Tensor]) -> dict[str, Any]:
    """An Adam optimizer state dict for ``model``: two moments per parameter (2x the model)."""
    return {
        "state": {
            i: {"step": torch.tensor(10.0), "exp_avg": t.clone(), "exp_avg_sq": t.abs()}
            for i, t in enumerate(model.values())
        },
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": list(range(len(model)))}],
    }


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
