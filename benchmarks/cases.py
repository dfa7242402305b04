"""The measurements behind each figure of the performance table (one function per figure).

Every ratio compares dacapo-store with its baseline measured in the same run, on the same
state dict: ``> 1`` means dacapo-store is faster (or uses less). Stores into MongoDB go into a
fresh mongomock database each time, for dacapo-store and baseline alike (mongomock slows down
as a bucket grows).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gridfs
import torch

from dacapo_store import LocalStatsStore, LocalWeightsStore, MongoStatsStore, MongoWeightsStore, Weights
from dacapo_store.stats_store import score_rows
from dacapo_store.testing.mongomock_support import mongomock_client

from .workloads import (
    MB,
    adam_state,
    best_time,
    best_times,
    model_state,
    mongomock_find_spy,
    queries_in,
    sqlite_statement_spy,
)

MAX_CHUNK_QUERY_BATCH = 16 * 1024 * 1024


@dataclass
class Row:
    """One line of the table: ``ours`` and ``baseline`` as printed, ``ratio`` against ``target``."""

    figure: str
    case: str
    ours: str
    baseline: str
    ratio: str
    target: str
    ok: bool | None


def _gbps(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e9:.2f} GB/s"


def _copy_into(destination: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """What ``model.load_state_dict`` does with a loaded state: copy every tensor."""
    for key, tensor in state.items():
        destination[key].copy_(tensor)


def _speed_row(figure: str, case: str, size: int, ours: float, baseline: float, target: float) -> Row:
    ratio = baseline / ours
    return Row(figure, case, _gbps(size, ours), _gbps(size, baseline), f"{ratio:.2f}x", f">= {target}x", ratio >= target)


def local_throughput(size: int, repeat: int) -> tuple[Row, Row]:
    """Figures 1 and 2, local backend: store vs ``torch.save`` + fsync, load vs ``torch.load``.

    Both sides write a new file each run (as a trainer writes each checkpoint), and what the
    previous run wrote is removed, untimed, before the next.
    """
    state = model_state(size)
    destination = {key: torch.empty_like(tensor) for key, tensor in state.items()}
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalWeightsStore(os.path.join(tmp, "store"))
        counter = itertools.count(1)
        written: dict[str, Any] = {}

        def clean_up() -> None:
            for info in store.list_checkpoints("run"):
                store.remove("run", info.iteration)
            if "path" in written:
                os.unlink(written.pop("path"))

        def save() -> None:
            written["path"] = os.path.join(tmp, f"baseline-{next(counter)}.pt")
            with open(written["path"], "wb") as file:
                torch.save(state, file)
                file.flush()
                os.fsync(file.fileno())

        stores = best_times(
            {"ours": lambda: store.put_weights("run", next(counter), Weights(state, None)), "baseline": save},
            repeat,
            clean_up,
        )
        iteration = store.put_weights("run", next(counter), Weights(state, None)).iteration
        save()
        loads = best_times(
            {
                "ours": lambda: _copy_into(destination, store.retrieve_weights("run", iteration, optimizer=False).model),
                "baseline": lambda: _copy_into(destination, torch.load(written["path"], weights_only=True)),
            },
            repeat,
        )
    label = f"local {size // MB} MB"
    return (
        _speed_row("1 store", label, size, stores["ours"], stores["baseline"], 0.9),
        _speed_row("2 load", label + " (+copy into model)", size, loads["ours"], loads["baseline"], 0.9),
    )


def mongo_throughput(size: int, repeat: int) -> tuple[Row, Row, Row]:
    """Figures 1 and 2, MongoDB (mongomock): against the naive GridFS path; chunk query count."""
    state = model_state(size)
    destination = {key: torch.empty_like(tensor) for key, tensor in state.items()}
    fresh: dict[str, Any] = {}

    def new_database() -> None:
        fresh.clear()  # drop the previous database before the next is filled
        fresh["client"] = mongomock_client()
        fresh["store"] = MongoWeightsStore(fresh["client"])
        fresh["bucket"] = gridfs.GridFSBucket(fresh["client"].get_database("naive"), "weights")

    def naive_store() -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        fresh["file_id"] = fresh["bucket"].upload_from_stream("state", buffer)

    def naive_load() -> None:
        buffer = io.BytesIO()
        fresh["bucket"].download_to_stream(fresh["file_id"], buffer)
        buffer.seek(0)
        _copy_into(destination, torch.load(buffer, weights_only=True))

    stores = best_times(
        {"ours": lambda: fresh["store"].put_weights("run", 1, Weights(state, None)), "baseline": naive_store},
        repeat,
        new_database,
    )
    new_database()
    naive_store()
    fresh["store"].put_weights("run", 1, Weights(state, None))
    loads = best_times(
        {
            "ours": lambda: _copy_into(destination, fresh["store"].retrieve_weights("run", 1, optimizer=False).model),
            "baseline": naive_load,
        },
        repeat,
    )
    with mongomock_find_spy() as calls:
        fresh["store"].retrieve_weights("run", 1, optimizer=False)
    chunk_queries = calls["dacapo_store.weights.chunks"]
    allowed = math.ceil(size / MAX_CHUNK_QUERY_BATCH) + 3
    label = f"mongomock {size // MB} MB"
    return (
        _speed_row("1 store", label, size, stores["ours"], stores["baseline"], 1.0),
        _speed_row("2 load", label + " (+copy into model)", size, loads["ours"], loads["baseline"], 1.0),
        Row("2 chunk queries", label, str(chunk_queries), f"limit {allowed}", "-", f"<= {allowed}", chunk_queries <= allowed),
    )


def memory(size: int) -> Iterator[Row]:
    """Figure 3: memory of a store (transient: peak minus what stays) and peak of a load, each
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
        yield Row("3 store memory", f"{case.split('-')[0]} {label} (transient)", f"{transient / MB:.1f} MB", "-", "-",
                  "<= 100 MB", transient <= 100 * MB)
    for case, baseline in (("local-load", "baseline-load"), ("mongo-load", "mongo-naive-load")):
        ours, theirs = measured(case)["peak"], measured(baseline)["peak"]
        yield Row(
            "3 load peak", f"{case.split('-')[0]} {label}", f"{ours / size:.2f}x size", f"{theirs / size:.2f}x size ({baseline})",
            f"{ours / size:.2f}x", "<= 1.25x", ours <= 1.25 * size,
        )


def model_only(size: int) -> Iterator[Row]:
    """Figure 4: bytes of payload read by ``retrieve_weights(optimizer=False)`` (Adam: 2x model)."""
    model = model_state(size)
    weights = Weights(model, adam_state(model))
    with tempfile.TemporaryDirectory() as tmp:
        for name, store in (("local", LocalWeightsStore(tmp)), ("mongomock", MongoWeightsStore(mongomock_client()))):
            info = store.put_weights("run", 1, weights)
            read = _payload_bytes_read(store, lambda: store.retrieve_weights("run", 1, optimizer=False))
            full = _payload_bytes_read(store, lambda: store.retrieve_weights("run", 1))
            ratio = read / info.parts["model"].size
            yield Row("4 model-only", f"{name} {size // MB} MB model", f"{read / MB:.1f} MB read", f"{full / MB:.1f} MB (with optimizer)",
                      f"{ratio:.2f}x model", "<= 1.1x model", ratio <= 1.1)


def _payload_bytes_read(store: Any, action: Any) -> int:
    """Sum of the sizes of the payloads ``action`` loaded through ``store._load_part``."""
    fetched: list[int] = []
    original = store._load_part

    def spy(info: Any, part: str, map_location: Any) -> Any:
        fetched.append(info.parts[part].size)
        return original(info, part, map_location)

    store._load_part = spy
    try:
        action()
    finally:
        del store._load_part
    return sum(fetched)


def lookups(small: int, large: int, repeat: int) -> Iterator[Row]:
    """Figure 5: queries of ``retrieve_best``/``latest_iteration``; local time at small vs large."""
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
            yield Row("5 queries", f"local, {count} scores", f"best {best_queries}, latest {latest_queries}", "-", "-", "1 each",
                      best_queries == 1 and latest_queries == 1)
            timings[count] = (
                best_time(lambda: weights.retrieve_best("run", "ds", "f1"), repeat * 20),
                best_time(lambda: weights.latest_iteration("run"), repeat * 20),
            )
        for index, name in enumerate(("retrieve_best", "latest_iteration")):
            ratio = timings[large][index] / timings[small][index]
            yield Row("5 lookup time", f"local {name}, {large} vs {small} scores",
                      f"{timings[large][index] * 1e6:.0f} us", f"{timings[small][index] * 1e6:.0f} us", f"{ratio:.2f}x", "< 2x", ratio < 2)
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
        yield Row("5 queries", f"mongomock, {small} scores, 10 checkpoints", f"best {best_queries}, latest {latest_queries}", "-", "-",
                  "1 each", best_queries == 1 and latest_queries == 1)


def _fill_scores(stats: Any, count: int) -> None:
    """Store ``count`` scores of run ``run`` on ``ds``/``f1``: 100 parameter sets per iteration."""
    rows = []
    for index in range(count):
        iteration, parameter = divmod(index, 100)
        rows += score_rows("run", iteration, "ds", {"f1": (index * 7919) % 1000 / 1000}, {"f1": True}, {"p": parameter})
    stats._put_scores(rows)


def cuda(size: int, repeat: int) -> Iterator[Row]:
    """Figure 7: ``retrieve_weights(map_location="cuda")`` vs loading to CPU and moving."""
    if not torch.cuda.is_available():
        yield Row("7 cuda load", f"{size // MB} MB", "skipped", "skipped", "-", ">= 1.0x", None)
        yield Row("7 cuda load", "no CUDA device", "-", "-", "-", "-", None)
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

            yield _speed_row("7 cuda load", f"{name} {size // MB} MB", size, best_time(direct, repeat), best_time(via_cpu, repeat), 1.0)
