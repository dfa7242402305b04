"""A big catalog still answers ``latest_iteration`` and ``retrieve_best`` with one indexed query.

Local: 10,000 checkpoints and 1,000,000 scores, bulk-inserted with ``executemany``; the SQLite
trace callback counts every statement, and ``EXPLAIN QUERY PLAN`` shows each uses an index
(no table scan, no temporary sort). mongomock cannot hold a million documents quickly and uses
no indexes, so there a smaller catalog proves the call count, and the query shape is checked
against the declared index (filter fields = index prefix, sort = the following keys).
"""

from __future__ import annotations

import itertools
import json

import pytest

from dacapo_store import LocalWeightsStore, MongoWeightsStore
from dacapo_store.mongo.scores import SCORE_INDEXES
from dacapo_store.mongo.weights import CHECKPOINT_INDEXES
from dacapo_store.testing.mongomock_support import mongomock_client

RUNS, CHECKPOINTS_PER_RUN = 10, 1_000
DATASETS, CRITERIA, PARAMETER_SETS = 4, 5, 5
"""10 runs x 1,000 checkpoints; 10 runs x 1,000 iterations x 4 x 5 x 5 = 1,000,000 scores."""
PARTS = json.dumps({"model": {"location": "x.model.pt", "size": 1, "sha256": "0" * 64}})


def score_value(run: int, iteration: int, dataset: int, criterion: int, parameters: int) -> float | None:
    """Deterministic scores with one unique best at iteration 777, parameter set 3; some NaN."""
    if (iteration * 7 + parameters) % 97 == 0:
        return None  # NaN: stored as NULL with no rank
    if iteration == 777 and parameters == 3:
        return 2.0
    return ((iteration * 31 + parameters * 17 + run) % 1000) / 1000.0


@pytest.fixture(scope="module")
def big_local_store(tmp_path_factory: pytest.TempPathFactory) -> LocalWeightsStore:
    store = LocalWeightsStore(tmp_path_factory.mktemp("big"))
    with store.catalog.transaction() as db:
        db.executemany(
            "INSERT INTO checkpoints (run, iteration, state, token, created, heartbeat, parts)"
            " VALUES (?, ?, 'complete', ?, 0, 0, ?)",
            ((f"run{r}", i, f"t{r}-{i}", PARTS) for r in range(RUNS) for i in range(CHECKPOINTS_PER_RUN)),
        )
        db.executemany(
            "INSERT INTO validation_scores"
            " (run, dataset, criterion, iteration, parameters, value, higher_is_better, rank)"
            " VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
            (
                (f"run{r}", f"d{d}", f"c{c}", i, json.dumps({"p": p}), value, value)
                for r, i, d, c, p in itertools.product(
                    range(RUNS), range(CHECKPOINTS_PER_RUN), range(DATASETS), range(CRITERIA), range(PARAMETER_SETS)
                )
                for value in [score_value(r, i, d, c, p)]
            ),
        )
    return store


@pytest.mark.slow  # builds a big catalog (~10 s)
def test_big_local_catalog_answers_with_one_indexed_query_each(big_local_store: LocalWeightsStore) -> None:
    store = big_local_store
    counts = store.catalog.query(
        "SELECT (SELECT COUNT(*) FROM checkpoints) AS checkpoints, (SELECT COUNT(*) FROM validation_scores) AS scores"
    )[0]
    assert (counts["checkpoints"], counts["scores"]) == (10_000, 1_000_000)
    statements: list[str] = []
    db = store.catalog.connection()
    db.set_trace_callback(statements.append)
    try:
        assert store.latest_iteration("run4") == CHECKPOINTS_PER_RUN - 1
        latest_statements = list(statements)
        statements.clear()
        assert store.retrieve_best("run4", "d2", "c3") == 777
        best_statements = list(statements)
    finally:
        db.set_trace_callback(None)
    assert len(latest_statements) == 1 and len(best_statements) == 1
    for statement in (*latest_statements, *best_statements):
        plan = " | ".join(row["detail"] for row in db.execute(f"EXPLAIN QUERY PLAN {statement}"))
        assert "USING" in plan and "INDEX" in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # no sort outside the index
        assert "SCAN validation_scores" not in plan and "SCAN checkpoints" not in plan, plan


class CountingCollection:
    """Wraps a collection; records every call of a method that sends a command to the server."""

    QUERIES = {"find", "find_one", "aggregate", "count_documents", "distinct", "find_one_and_update"}

    def __init__(self, collection: object) -> None:
        self._collection = collection
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self._collection, name)
        if name not in self.QUERIES:
            return attribute

        def counted(*args: object, **kwargs: object) -> object:
            self.calls.append((name, args, kwargs))
            return attribute(*args, **kwargs)

        return counted


def served_by_index(filter_fields: list[str], sort_fields: list[str], indexes: tuple) -> bool:
    """Whether some index has the filter's fields as its prefix, followed by the sort's fields."""
    for keys, _ in indexes:
        names = [name for name, _ in keys]
        prefix = names[: len(filter_fields)]
        if sorted(prefix) == sorted(filter_fields) and names[len(filter_fields) :][: len(sort_fields)] == sort_fields:
            return True
    return False


def test_mongomock_latest_and_best_are_one_query_shaped_for_an_index() -> None:
    store = MongoWeightsStore(mongomock_client(), "big")
    runs, per_run = 4, 50
    store.checkpoints.insert_many(
        {"run": f"run{r}", "iteration": i, "state": "complete", "token": f"t{r}-{i}", "created": 0.0,
         "heartbeat": 0.0, "parts": json.loads(PARTS)}
        for r in range(runs) for i in range(per_run)
    )
    scores = [
        {"run": f"run{r}", "dataset": "d", "criterion": "c", "iteration": i, "parameters": json.dumps({"p": p}),
         "value": v, "higher_is_better": True, "rank": v, "ranked": v is not None}
        for r in range(runs) for i in range(per_run) for p in range(5)
        for v in [score_value(r, i, 0, 0, p)]
    ]
    store.scores.insert_many(scores)
    ranked = [s for s in scores if s["run"] == "run2" and s["ranked"]]
    best = min(ranked, key=lambda s: (-s["rank"], s["iteration"], s["parameters"]))["iteration"]
    store.checkpoints, store.scores = CountingCollection(store.checkpoints), CountingCollection(store.scores)
    assert store.latest_iteration("run2") == per_run - 1
    assert store.retrieve_best("run2", "d", "c") == best
    for collection, indexes in ((store.checkpoints, CHECKPOINT_INDEXES), (store.scores, SCORE_INDEXES)):
        [(name, args, kwargs)] = collection.calls
        assert name == "find_one"
        assert served_by_index(list(args[0]), [field for field, _ in kwargs["sort"]], indexes)
