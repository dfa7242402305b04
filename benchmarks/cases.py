"""The untimed figures of the performance table: memory, bytes read, queries, CUDA loads (one
function per figure; the timed ones are in :mod:`benchmarks.speed`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import torch

from dacapo_store import LocalStatsStore, LocalWeightsStore, MongoStatsStore, MongoWeightsStore, Weights
from dacapo_store.stats_store import score_rows
from dacapo_store.testing.mongomock_support import mongomock_client

from .table import Row, faster_rows
from .timing import Contender, best_time, interleaved
from .workloads import MB, adam_state, model_state, mongomock_find_spy, queries_in, sqlite_statement_spy


def memory(size: int) -> Iterator[Row]:
    """Figure 6: memory of a store (transient: peak minus what stays) and peak of a load, each
    in a fresh process (see :mod:`benchmarks.memory`)."""

    def measured(case: str) -> dict[str, int]:
        output = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", case, str(size)],
            check=True, capture_output=True, text=True,
        ).stdout
        return json.loads(output)

    label = f"{size // MB} MB"
    for case in ("local-store", "mongo-store"):
        result = measured(case)
        transient = result["peak"] - result["retained"]
        yield Row("6 store memory", f"{case.split('-')[0]} {label} (transient)", f"{transient / MB:.1f} MB", "-", "-", "-",
                  "<= 100 MB", transient <= 100 * MB)
    for case, baseline in (("local-load", "baseline-load"), ("mongo-load", "mongo-naive-load")):
        ours, theirs = measured(case)["peak"], measured(baseline)["peak"]
        yield Row(
            "6 load peak", f"{case.split('-')[0]} {label}", f"{ours / size:.2f}x size", baseline, f"{theirs / size:.2f}x size",
            f"{ours / size:.2f}x", "<= 1.25x", ours <= 1.25 * size,
        )


def model_only(size: int) -> Iterator[Row]:
    """Figure 7: bytes of payload read by ``retrieve_weights(optimizer=False)`` (Adam: 2x model)."""
    model = model_state(size)
    weights = Weights(model, adam_state(model))
    with tempfile.TemporaryDirectory() as tmp:
        for name, store in (("local", LocalWeightsStore(tmp)), ("mongomock", MongoWeightsStore(mongomock_client()))):
            info = store.put_weights("run", 1, weights)
            read = _payload_bytes_read(store, lambda: store.retrieve_weights("run", 1, optimizer=False))
            full = _payload_bytes_read(store, lambda: store.retrieve_weights("run", 1))
            ratio = read / info.parts["model"].size
            yield Row("7 model-only", f"{name} {size // MB} MB model", f"{read / MB:.1f} MB read", "with optimizer",
                      f"{full / MB:.1f} MB", f"{ratio:.2f}x model", "<= 1.1x model", ratio <= 1.1)


def _payload_bytes_read(store: Any, action: Any) -> int:
    """Sum of the sizes of the payloads ``action`` loaded through ``store._load_part``."""
    fetched: list[int] = []
    original = store._load_part

    def spy(info: Any, part: str, *args: Any) -> Any:
        fetched.append(info.parts[part].size)
        return original(info, part, *args)

    store._load_part = spy
    try:
        action()
    finally:
        del store._load_part
    return sum(fetched)


def lookups(small: int, large: int, repeat: int) -> Iterator[Row]:
    """Figure 8: queries of ``retrieve_best``/``latest_iteration``; local time at small vs large."""
    with tempfile.TemporaryDirectory() as tmp:
        timings = {}
        for count in (small, large):
            basedir = os.path.join(tmp, str(count))
            weights, stats = LocalWeightsStore(basedir), LocalStatsStore(basedir)
            _fill_scores(stats, count)
            weights.put_weights("run", 1, Weights({"w": torch.zeros(1)}, None))
            with sqlite_statement_spy(weights.catalog) as statements:
                weights.retrieve_best("run", "ds", "f1")
                best_queries = len(queries_in(statements))
            with sqlite_statement_spy(weights.catalog) as statements:
                weights.latest_iteration("run")
                latest_queries = len(queries_in(statements))
            yield Row("8 queries", f"local, {count} scores", f"best {best_queries}, latest {latest_queries}", "-", "-", "-",
                      "1 each", best_queries == 1 and latest_queries == 1)
            timings[count] = (
                best_time(lambda: weights.retrieve_best("run", "ds", "f1"), repeat * 20),
                best_time(lambda: weights.latest_iteration("run"), repeat * 20),
            )
        for index, name in enumerate(("retrieve_best", "latest_iteration")):
            ratio = timings[large][index] / timings[small][index]
            yield Row("8 lookup time", f"local {name}, {large} scores", f"{timings[large][index] * 1e6:.0f} us",
                      f"{small} scores", f"{timings[small][index] * 1e6:.0f} us", f"{ratio:.2f}x", "< 2x", ratio < 2)
        client = mongomock_client()
        weights, stats = MongoWeightsStore(client), MongoStatsStore(client)
        _fill_scores(stats, small)
        for iteration in range(1, 11):
            weights.put_weights("run", iteration, Weights({"w": torch.zeros(1)}, None))
        with mongomock_find_spy() as calls:
            weights.retrieve_best("run", "ds", "f1")
            best_queries = sum(calls.values())
        with mongomock_find_spy() as calls:
            weights.latest_iteration("run")
            latest_queries = sum(calls.values())
        yield Row("8 queries", f"mongomock, {small} scores, 10 checkpoints", f"best {best_queries}, latest {latest_queries}",
                  "-", "-", "-", "1 each", best_queries == 1 and latest_queries == 1)


def _fill_scores(stats: Any, count: int) -> None:
    """Store ``count`` scores of run ``run`` on ``ds``/``f1``: 100 parameter sets per iteration."""
    rows = []
    for index in range(count):
        iteration, parameter = divmod(index, 100)
        rows += score_rows("run", iteration, "ds", {"f1": (index * 7919) % 1000 / 1000}, {"f1": True}, {"p": parameter})
    stats._put_scores(rows)


def cuda(size: int, rounds: int) -> Iterator[Row]:
    """Figure 9: ``retrieve_weights(map_location="cuda")`` vs loading to the CPU and moving."""
    if not torch.cuda.is_available():
        yield Row("9 cuda load", f"{size // MB} MB, no CUDA device", "skipped", "-", "-", "-", ">= 1.0x", None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, store in (("local", LocalWeightsStore(tmp)), ("mongomock", MongoWeightsStore(mongomock_client()))):
            store.put_weights("run", 1, Weights(model_state(size), None))

            def direct() -> None:
                store.retrieve_weights("run", 1, map_location="cuda", optimizer=False)
                torch.cuda.synchronize()

            def via_cpu() -> None:
                state = store.retrieve_weights("run", 1, optimizer=False).model
                {key: tensor.to("cuda") for key, tensor in state.items()}
                torch.cuda.synchronize()

            samples = interleaved({"direct": Contender(direct), "via_cpu": Contender(via_cpu)}, rounds)
            yield from faster_rows("9 cuda load", f"{name} {size // MB} MB", samples, "direct",
                                   {"via_cpu": "load to CPU, then .to(cuda)"})
