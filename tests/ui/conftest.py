"""Fixtures of the dashboard tests: a store holding a few runs (one with a hostile name) on
each backend, opened read-only as ``dacapo-store ui`` opens it: a local directory, mongomock,
and MongoDB's wire protocol (mockupdb) with a user whose role is ``read``.

Without the ui extra (or selenium and Chromium, for the browser tests) the tests skip, unless
``DACAPO_STORE_REQUIRE_BROWSER=1`` (as CI sets): then they fail.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dacapo_store import (
    LocalStatsStore,
    LocalWeightsStore,
    MongoStatsStore,
    MongoWeightsStore,
    StatsStore,
    TrainingIterationStats,
    WeightsStore,
)
from dacapo_store.experiments.config_store import LocalRunConfigStore, MongoRunConfigStore, RunConfigStore
from dacapo_store.testing.browser import REQUIRE_BROWSER_ENV
from dacapo_store.testing.contract import ToyRun
from dacapo_store.testing.mongomock_support import mongomock_client

HOSTILE = "<script>alert(\"x\")</script> 'q' & ünï ☃ </td>"
HOSTILE_DATASET = "<img src=x onerror=alert(1)>"
HOSTILE_CRITERION = "\"quoted\" & <b>bold</b>"
MONGO_LABEL = "mongodb://lab:***@db.example:27017/lab"
UI_MODULES = ("starlette", "uvicorn", "jinja2", "plotly", "httpx2")


def required() -> bool:
    """Whether missing dashboard dependencies fail the tests instead of skipping them."""
    return os.environ.get(REQUIRE_BROWSER_ENV) == "1"


def require_ui_extra() -> None:
    """Skip the calling test module without the ui extra and httpx2 (fail where required)."""
    for name in UI_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            if required():
                raise
            pytest.skip(f"{name} is not installed: pip install -e '.[test,ui]'", allow_module_level=True)


@dataclass
class Seeded:
    """What :func:`seed` stored: the checkpoint sizes of run ``alpha`` by iteration."""

    alpha_sizes: dict[int, int]


def seed(weights: WeightsStore, stats: StatsStore, configs: RunConfigStore) -> Seeded:
    """Store run ``alpha`` (checkpoints 10, 20, 30; loss over 31 iterations; ``val`` scores by
    ``dice`` (higher is better, best 20) and ``loss`` (lower is better, best 30, a NaN at 10);
    a run config), the run :data:`HOSTILE` (checkpoint 5, a score on hostile dataset and
    criterion names, a config with a hostile value), and ``stats-only`` (training stats only)."""
    alpha = ToyRun("alpha")
    for iteration, dice, loss in [(10, 0.5, math.nan), (20, 0.9, 0.3), (30, 0.8, 0.2)]:
        weights.store_weights(alpha, iteration)
        stats.store_validation_scores(alpha, iteration, "val", {"dice": dice, "loss": loss}, {"dice": True, "loss": False})
    stats.store_training_stats(alpha, [TrainingIterationStats(i, 1.0 / (i + 1), 0.01) for i in range(31)])
    configs.store_run_config({"name": "alpha", "learning_rate": 0.001, "note": "</pre><script>alert(1)</script>"})
    hostile = ToyRun(HOSTILE)
    weights.store_weights(hostile, 5)
    stats.store_validation_scores(hostile, 5, HOSTILE_DATASET, {HOSTILE_CRITERION: 0.4}, {HOSTILE_CRITERION: True})
    stats.store_validation_scores(hostile, 5, "val", {"dice": 0.7}, {"dice": True})
    configs.store_run_config({"name": HOSTILE, "value": HOSTILE})
    stats.store_training_stats("stats-only", [TrainingIterationStats(0, 0.5, 0.01)])
    return Seeded({info.iteration: info.size for info in weights.list_checkpoints("alpha")})


@dataclass
class Backend:
    """A seeded store opened read-only for the dashboard, and how it was opened."""

    name: str
    stores: object  # DashboardStores
    seeded: Seeded
    wire: object | None = None
    clients: tuple = ()


@pytest.fixture(scope="session")
def wire_server() -> Iterator[object]:
    from dacapo_store.testing.wire import WireServer

    with WireServer() as server:
        yield server


def open_backend(name: str, tmp_path, wire_server_factory) -> Backend:
    """Seed a store of backend ``name`` with a writer, then open it read-only."""
    from dacapo_store.ui.queries import DashboardStores, open_dashboard_stores

    if name == "local":
        directory = tmp_path / "store"
        seeded = seed(LocalWeightsStore(directory), LocalStatsStore(directory), LocalRunConfigStore(directory))
        return Backend(name, open_dashboard_stores(str(directory)), seeded)
    if name == "mongomock":
        client = mongomock_client()
        seeded = seed(MongoWeightsStore(client), MongoStatsStore(client), MongoRunConfigStore(client))
        stores = DashboardStores(
            MongoWeightsStore(client, read_only=True), MongoStatsStore(client, read_only=True),
            MongoRunConfigStore(client, read_only=True), MONGO_LABEL,
        )
        return Backend(name, stores, seeded)
    server = wire_server_factory()
    server.reset()
    uri = server.uri_with("lab")
    writers = (MongoWeightsStore(uri), MongoStatsStore(uri), MongoRunConfigStore(uri))
    seeded = seed(*writers)
    server.role = "read"
    readers = (
        MongoWeightsStore(uri, read_only=True), MongoStatsStore(uri, read_only=True),
        MongoRunConfigStore(uri, read_only=True),
    )
    server.clear()
    clients = tuple(store.database.client for store in writers + readers)
    return Backend(name, DashboardStores(*readers, MONGO_LABEL), seeded, server, clients)


@pytest.fixture(params=["local", "mongomock", "wire"])
def backend(request, tmp_path) -> Iterator[Backend]:
    """A seeded store (see :func:`seed`) of each backend, opened read-only."""
    opened = open_backend(request.param, tmp_path, lambda: request.getfixturevalue("wire_server"))
    yield opened
    for client in opened.clients:
        client.close()
