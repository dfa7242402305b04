"""Fixtures for the operations tests: a store addressed the way the CLI addresses it.

``ops_store`` is parametrized over ``local`` (a directory under ``tmp_path``) and ``mongomock``
(a ``mongodb://`` URI served by ``mongomock.patch``, so every client the CLI opens on that URI,
and the test's own stores, share one in-memory server). The CLI is exercised exactly as users
run it: ``--store <uri or path>`` through ``dacapo_store.config``; nothing in the CLI is replaced.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import mongomock
import pytest
import torch
from click.testing import CliRunner, Result

from dacapo_store import TrainingIterationStats, Weights, create_stats_store, create_weights_store
from dacapo_store.cli import main
from dacapo_store.testing.mongomock_support import patch_mongomock

MONGOMOCK_URI = "mongodb://ops:s3cret-pw@localhost:27017/ops_tests"


@dataclass
class OpsStore:
    """A store under test: its ``--store`` value, the backend name, and stores opened on it."""

    backend: str
    uri: str

    def __post_init__(self) -> None:
        self.weights = create_weights_store(self.uri)
        self.stats = create_stats_store(self.uri)

    def cli(self, *args: str) -> Result:
        """Run ``dacapo-store ARGS --store URI`` in-process."""
        return CliRunner().invoke(main, [*args, "--store", self.uri], catch_exceptions=False)


@pytest.fixture(params=["local", "mongomock"])
def ops_store(request, tmp_path, monkeypatch) -> Iterator[OpsStore]:
    monkeypatch.delenv("DACAPO_STORE_URI", raising=False)
    if request.param == "local":
        yield OpsStore("local", str(tmp_path / "store"))
        return
    patch_mongomock()
    with mongomock.patch(servers=(("localhost", 27017),)):
        yield OpsStore("mongomock", MONGOMOCK_URI)


def toy_weights(seed: int = 0) -> Weights:
    """Small model and Adam state dicts (a few KiB)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    return Weights(model.state_dict(), optimizer.state_dict())


def dice_at(iteration: int, threshold: float = 0.5) -> float:
    """A validation curve that peaks at iteration 500 (threshold 0.5 is better)."""
    return 0.9 - ((iteration - 500) / 1000) ** 2 - abs(threshold - 0.5) / 10


def seed_run(store: OpsStore, run: str = "run_a", iterations=range(100, 1100, 100)) -> None:
    """Checkpoints at ``iterations``, training losses, and dice (higher is better) and loss
    (lower is better) scores on dataset ``val`` for thresholds 0.3 and 0.5: best at 500."""
    for iteration in iterations:
        store.weights.put_weights(run, iteration, toy_weights(iteration))
        for threshold in (0.3, 0.5):
            dice = dice_at(iteration, threshold)
            store.stats.store_validation_scores(
                run, iteration, "val", {"dice": dice, "loss": 1 - dice},
                {"dice": True, "loss": False}, {"threshold": threshold},
            )
    store.stats.store_training_stats(
        run,
        [TrainingIterationStats(i, 1 / (1 + i / 100) + 0.01 * math.sin(i), 0.1) for i in range(0, max(iterations), 10)],
    )
