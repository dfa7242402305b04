"""Figure 10: how fast the dashboard's runs page answers on a large store (1,000 runs,
100,000 validation scores, 2 checkpoints per run), through HTTP (Starlette's TestClient):
the page and its JSON endpoint, and the store queries behind them.

``python -m benchmarks.dashboard [--runs N] [--scores N] [--rounds N] [--mongomock]`` prints
this figure alone; ``python -m benchmarks`` includes it (local store). Needs the ui extra. Each
figure is the fastest of its requests (not a median).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator

import torch

from dacapo_store import LocalStatsStore, LocalWeightsStore, MongoStatsStore, MongoWeightsStore, Weights
from dacapo_store.stats_store import score_rows
from dacapo_store.testing.mongomock_support import mongomock_client

from .table import Row, markdown
from .timing import best_time

DATASETS = ("validate_0", "validate_1")
CRITERIA = {"f1_score": True, "iou": True, "voi": False, "precision": True, "recall": True}
TARGET_SECONDS = 1.0


def fill(weights, stats, runs: int, scores: int) -> None:
    """``runs`` runs with 2 checkpoints each (a tiny model) and ``scores`` scores spread over
    them: every dataset and criterion at ``scores / (runs * 10)`` iterations."""
    per_iteration = len(DATASETS) * len(CRITERIA)
    iterations = max(1, scores // (runs * per_iteration))
    state = Weights({"w": torch.zeros(4)}, None)
    for index in range(runs):
        run = f"run-{index:05d}"
        for iteration in (iterations - 1, iterations):
            weights.put_weights(run, iteration, state)
        rows = []
        for iteration in range(1, iterations + 1):
            for dataset in DATASETS:
                values = {name: ((index * 7919 + iteration * 31) % 1000) / 1000 for name in CRITERIA}
                rows += score_rows(run, iteration, dataset, values, CRITERIA, None)
        stats._put_scores(rows)


def runs_page(runs: int, scores: int, rounds: int, mongomock: bool = False) -> Iterator[Row]:
    """The runs page (HTML) and ``/api/runs`` (JSON) of a local store (and with ``mongomock``
    a mongomock one: slow, pure Python, no target) holding ``runs`` runs and ``scores``
    scores: the fastest of ``rounds`` requests each."""
    from starlette.testclient import TestClient

    from dacapo_store.experiments.config_store import MongoRunConfigStore
    from dacapo_store.ui.app import create_app
    from dacapo_store.ui.queries import DashboardStores, open_dashboard_stores

    with tempfile.TemporaryDirectory() as tmp:
        fill(LocalWeightsStore(tmp), LocalStatsStore(tmp), runs, scores)
        backends = {"local": open_dashboard_stores(tmp)}
        if mongomock:
            client = mongomock_client()
            fill(MongoWeightsStore(client), MongoStatsStore(client), runs, scores)
            backends["mongomock"] = DashboardStores(
                MongoWeightsStore(client, read_only=True), MongoStatsStore(client, read_only=True),
                MongoRunConfigStore(client, read_only=True), "mongomock",
            )
        for name, stores in backends.items():
            with TestClient(create_app(stores)) as http:
                assert len(http.get("/api/runs").json()["runs"]) == runs
                for path in ("/", "/api/runs"):
                    seconds = best_time(lambda: http.get(path).raise_for_status(), rounds)
                    target = f"< {TARGET_SECONDS:g} s" if name == "local" else "- (mongomock is pure Python)"
                    yield Row(
                        "10 runs page", f"{name} GET {path}, {runs} runs, {scores} scores", f"{seconds * 1e3:.0f} ms",
                        "-", "-", "-", target, seconds < TARGET_SECONDS if name == "local" else None,
                    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs in the store (default 1000)")
    parser.add_argument("--scores", type=int, default=100_000, help="validation scores in the store (default 100000)")
    parser.add_argument("--rounds", type=int, default=5, help="requests per figure; the fastest counts (default 5)")
    parser.add_argument("--mongomock", action="store_true", help="also time a mongomock store (slow; no target)")
    args = parser.parse_args(argv)
    print("\n".join(markdown(list(runs_page(args.runs, args.scores, args.rounds, args.mongomock)))))


if __name__ == "__main__":
    main()
