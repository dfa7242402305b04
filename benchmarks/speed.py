"""The timed figures: dacapo-store against the strongest baseline a competent user would write.

Every figure times its contenders in the same interleaved rounds (:mod:`benchmarks.timing`) on
the same model and optimizer state. A "model of N MB" is N MB of float32 parameters; its Adam
optimizer state after one step holds two moments per parameter, so the checkpoint is 3N MB.

Baselines:

- storing: ``torch.save({"model": ..., "optimizer": ...}, file)`` to a new file, then ``fsync``;
  into MongoDB, ``torch.save`` to a BytesIO and ``GridFSBucket.upload_from_stream`` with the
  same chunk size as dacapo-store (mongomock's cost grows with the chunk count).
- loading: ``torch.load(path, weights_only=True)``, and ``torch.load(path, mmap=True,
  weights_only=True)``; every tensor is touched (summed), so a memory map pays for its pages.
- resume: load into a freshly built model and Adam, then one optimizer step (a copy-on-write
  map pays when the step writes its state).
- inference: load the model part into a fresh model (``load_state_dict``) from a model-only file.
"""

from __future__ import annotations

import gc
import io
import itertools
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace
from typing import Any

import gridfs
import torch

from dacapo_store import LocalWeightsStore, MongoWeightsStore
from dacapo_store.mongo.weights import CHUNK_SIZE_BYTES
from dacapo_store.payload_memory import release_spare_memory
from dacapo_store.testing.mongomock_support import mongomock_client

from .system import busy_neighbour, can_drop_page_cache, drop_from_page_cache, release_freed_memory, resident_bytes
from .table import Row, faster_rows, fraction_row
from .timing import Contender, interleaved
from .workloads import MB, TrainedModel

SMALL_CHECKPOINT_BYTES = 8_000_000
"""The many-small-tensors checkpoint: 5,000 parameters and their Adam state (20,000 tensors)."""


def describe_model(size: int) -> str:
    return f"{size / MB:g} MB model + Adam ({3 * size / MB:g} MB)"


def describe_small_model(tensors: int) -> str:
    return f"{tensors:,} small params + Adam ({SMALL_CHECKPOINT_BYTES / MB:g} MB, {4 * tensors:,} tensors)"


def _touch(state: Any) -> None:
    """Read every byte of every tensor in ``state`` (a memory-mapped page then counts)."""
    if isinstance(state, torch.Tensor):
        state.sum()
    elif isinstance(state, dict):
        for value in state.values():
            _touch(value)


def _touch_weights(weights: Any) -> None:
    _touch(weights.model)
    _touch(weights.optimizer)


def _run(trained: TrainedModel) -> SimpleNamespace:
    return SimpleNamespace(name="run", model=trained, optimizer=trained.optimizer)


def _save_synced(state: Any, path: str) -> None:
    with open(path, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())


@contextmanager
def _local_store() -> Iterator[tuple[LocalWeightsStore, str]]:
    with tempfile.TemporaryDirectory(prefix="dacapo-store-bench-") as tmp:
        yield LocalWeightsStore(os.path.join(tmp, "store")), tmp


def store_local(trained: TrainedModel, label: str, rounds: int, busy: bool) -> list[Row]:
    """Figure 1, local: ``store_weights`` against ``torch.save`` + fsync, each writing a new file
    per round (what was written before is removed, untimed); with ``busy``, a CPU hog runs on
    one core throughout."""
    run, counter = _run(trained), itertools.count(1)
    with _local_store() as (store, tmp):
        written: list[str] = []

        def clean_up() -> None:
            for info in store.list_checkpoints("run"):
                store.remove("run", info.iteration)
            while written:
                os.unlink(written.pop())

        def baseline() -> None:
            written.append(os.path.join(tmp, f"baseline-{next(counter)}.pt"))
            _save_synced({"model": trained.state_dict(), "optimizer": trained.optimizer.state_dict()}, written[-1])

        contenders = {
            "ours": Contender(lambda: store.store_weights(run, next(counter)), clean_up),
            "save": Contender(baseline, clean_up),
        }
        with busy_neighbour() if busy else nullcontext():
            samples = interleaved(contenders, rounds)
    case = f"local, {label}" + (", busy neighbour" if busy else "")
    return faster_rows("1 store", case, samples, "ours", {"save": "torch.save + fsync"})


def store_mongo(trained: TrainedModel, label: str, rounds: int) -> list[Row]:
    """Figure 1, MongoDB (mongomock, a fresh database per round for both): ``store_weights``
    against ``torch.save`` to BytesIO + ``upload_from_stream`` with the same chunk size."""
    run, fresh = _run(trained), {}

    def new_database() -> None:
        fresh.clear()
        client = mongomock_client()
        fresh["store"] = MongoWeightsStore(client)
        fresh["bucket"] = gridfs.GridFSBucket(client.get_database("naive"), "weights", chunk_size_bytes=CHUNK_SIZE_BYTES)

    def naive() -> None:
        buffer = io.BytesIO()
        torch.save({"model": trained.state_dict(), "optimizer": trained.optimizer.state_dict()}, buffer)
        buffer.seek(0)
        fresh["bucket"].upload_from_stream("checkpoint", buffer)

    samples = interleaved(
        {"ours": Contender(lambda: fresh["store"].store_weights(run, 1), new_database),
         "naive": Contender(naive, new_database)},
        rounds,
    )
    return faster_rows("1 store", f"mongomock, {label}", samples, "ours",
                       {"naive": "torch.save + upload_from_stream, same chunks"})


class StoredCheckpoint:
    """One checkpoint of ``trained``, in a local store and as the baselines' files: the full
    checkpoint (model and optimizer) and the model alone."""

    def __init__(self, store: LocalWeightsStore, tmp: str, trained: TrainedModel) -> None:
        self.store = store
        self.info = store.store_weights(_run(trained), 1)
        self.full = os.path.join(tmp, "checkpoint.pt")
        self.model_only = os.path.join(tmp, "model.pt")
        _save_synced({"model": trained.state_dict(), "optimizer": trained.optimizer.state_dict()}, self.full)
        _save_synced(trained.state_dict(), self.model_only)
        self.payloads = {part: str(store.payload_path(info.location)) for part, info in self.info.parts.items()}

    def files(self, which: str) -> list[str]:
        """The files a contender reads: ``ours`` (both parts), ``ours-model``, ``full`` or ``model``."""
        return {
            "ours": list(self.payloads.values()), "ours-model": [self.payloads["model"]],
            "full": [self.full], "model": [self.model_only],
        }[which]


class PageCache:
    """Setups that evict a contender's files before each run (cold), or leave them (warm); the
    most bytes ``fincore`` still found resident after an eviction, for the table."""

    def __init__(self, cold: bool) -> None:
        self.cold = cold
        self.most_resident: int | None = None

    def setup(self, files: list[str], then: Callable[[], object] | None = None) -> Callable[[], None]:
        def prepare() -> None:
            if then is not None:
                then()
            if self.cold:
                drop_from_page_cache(files)
                resident = resident_bytes(files)
                if resident is not None:
                    self.most_resident = max(self.most_resident or 0, resident)
        return prepare

    def label(self) -> str:
        if not self.cold:
            return "warm"
        if self.most_resident is None:
            return "cold (posix_fadvise; fincore missing, not verified)"
        return f"cold (fincore: {self.most_resident // 1024} KiB resident)"


def _stored_cases(trained: TrainedModel, cold: bool) -> Iterator[tuple[StoredCheckpoint, PageCache]]:
    """A checkpoint of ``trained`` stored for every contender, with a warm page cache and, with
    ``cold`` where the system can evict files, a cold one."""
    with _local_store() as (store, tmp):
        stored = StoredCheckpoint(store, tmp, trained)
        for cold_case in [False, True] if cold and can_drop_page_cache() else [False]:
            yield stored, PageCache(cold_case)


def load_local(trained: TrainedModel, label: str, rounds: int, cold: bool) -> list[Row]:
    """Figure 2, local: ``retrieve_weights`` (model and optimizer; default, and ``mmap=True``)
    against ``torch.load`` of the full checkpoint, plain and memory-mapped; every tensor touched."""
    rows = []
    for stored, cache in _stored_cases(trained, cold):
        samples = interleaved({
            "ours": Contender(lambda: _touch_weights(stored.store.retrieve_weights("run", 1)), cache.setup(stored.files("ours"))),
            "ours-mmap": Contender(lambda: _touch_weights(stored.store.retrieve_weights("run", 1, mmap=True)),
                                   cache.setup(stored.files("ours"))),
            "plain": Contender(lambda: _touch(torch.load(stored.full, weights_only=True)), cache.setup(stored.files("full"))),
            "mmap": Contender(lambda: _touch(torch.load(stored.full, mmap=True, weights_only=True)),
                              cache.setup(stored.files("full"))),
        }, rounds)
        case = f"local, {label}, {cache.label()}"
        rows += faster_rows("2 load", case, samples, "ours", {"plain": "torch.load", "mmap": "torch.load(mmap=True)"})
        rows += faster_rows("2 load", case.replace("local,", "local mmap=True,"), samples, "ours-mmap",
                            {"mmap": "torch.load(mmap=True)"})
    return rows


def load_mongo(trained: TrainedModel, label: str, rounds: int) -> list[Row]:
    """Figure 2, MongoDB (mongomock): ``retrieve_weights`` against ``download_to_stream`` into a
    BytesIO + ``torch.load``, same chunk size; every tensor touched."""
    client = mongomock_client()
    store = MongoWeightsStore(client)
    store.store_weights(_run(trained), 1)
    bucket = gridfs.GridFSBucket(client.get_database("naive"), "weights", chunk_size_bytes=CHUNK_SIZE_BYTES)
    buffer = io.BytesIO()
    torch.save({"model": trained.state_dict(), "optimizer": trained.optimizer.state_dict()}, buffer)
    buffer.seek(0)
    file_id = bucket.upload_from_stream("checkpoint", buffer)

    def naive() -> None:
        downloaded = io.BytesIO()
        bucket.download_to_stream(file_id, downloaded)
        downloaded.seek(0)
        _touch(torch.load(downloaded, weights_only=True))

    samples = interleaved({"ours": Contender(lambda: _touch_weights(store.retrieve_weights("run", 1))),
                           "naive": Contender(naive)}, rounds)
    return faster_rows("2 load", f"mongomock, {label}", samples, "ours",
                       {"naive": "download_to_stream + torch.load, same chunks"})


class FreshRun:
    """A freshly built model and Adam optimizer shaped like ``trained``, gradients set: what a
    resuming process has before it loads (rebuilt, untimed, before each run)."""

    def __init__(self, trained: TrainedModel, fresh_process: bool) -> None:
        self._shapes = {name: parameter.shape for name, parameter in trained.named_parameters()}
        self.fresh_process = fresh_process
        self.run: SimpleNamespace | None = None

    def rebuild(self) -> None:
        """Build the fresh run; for a resume (``fresh_process``), first give the memory freed by
        earlier runs back to the system (glibc's heap, and dacapo-store's spare load memory), so
        loads fault in new pages as in a new process."""
        self.run = None
        if self.fresh_process:
            gc.collect()
            release_freed_memory()
            release_spare_memory()
        model = torch.nn.Module()
        for name, shape in self._shapes.items():
            model.register_parameter(name, torch.nn.Parameter(torch.ones(shape)))
            model.get_parameter(name).grad = torch.full(shape, 1e-3)
        self.run = SimpleNamespace(name="run", model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3))


def resume(trained: TrainedModel, label: str, rounds: int, cold: bool) -> list[Row]:
    """Figure 3: resume = load model and optimizer state into a fresh model and Adam, then one
    optimizer step. ``load_weights`` against ``torch.load`` (plain and mmap) + ``load_state_dict``.
    Each run starts with the memory of a new process (see :meth:`FreshRun.rebuild`): a resume
    happens once, at the start of a process."""
    fresh = FreshRun(trained, fresh_process=True)

    def baseline(stored: StoredCheckpoint, mmap: bool) -> None:
        state = torch.load(stored.full, mmap=mmap, weights_only=True)
        fresh.run.model.load_state_dict(state["model"])
        fresh.run.optimizer.load_state_dict(state["optimizer"])
        fresh.run.optimizer.step()

    def ours(stored: StoredCheckpoint) -> None:
        stored.store.load_weights(fresh.run, 1)
        fresh.run.optimizer.step()

    rows = []
    for stored, cache in _stored_cases(trained, cold):
        samples = interleaved({
            "ours": Contender(lambda: ours(stored), cache.setup(stored.files("ours"), fresh.rebuild)),
            "plain": Contender(lambda: baseline(stored, False), cache.setup(stored.files("full"), fresh.rebuild)),
            "mmap": Contender(lambda: baseline(stored, True), cache.setup(stored.files("full"), fresh.rebuild)),
        }, rounds)
        rows += faster_rows("3 resume", f"local, {label}, {cache.label()}", samples, "ours",
                            {"plain": "torch.load + load_state_dict", "mmap": "torch.load(mmap=True) + load_state_dict"})
    return rows


def inference(trained: TrainedModel, label: str, rounds: int, cold: bool) -> list[Row]:
    """Figure 4: load the model part into a fresh model for inference. ``retrieve_weights(...,
    optimizer=False)`` (default and ``mmap=True``) against ``torch.load`` of a model-only file
    (plain and mmap) + ``load_state_dict``. Runs follow each other in one process, as loads for
    validation or serving do, so the allocator may reuse memory freed by the previous run."""
    fresh = FreshRun(trained, fresh_process=False)

    def load(state: Any) -> None:
        fresh.run.model.load_state_dict(state)

    rows = []
    for stored, cache in _stored_cases(trained, cold):
        ours = stored.files("ours-model")
        samples = interleaved({
            "ours": Contender(lambda: load(stored.store.retrieve_weights("run", 1, optimizer=False).model),
                              cache.setup(ours, fresh.rebuild)),
            "ours-mmap": Contender(lambda: load(stored.store.retrieve_weights("run", 1, optimizer=False, mmap=True).model),
                                   cache.setup(ours, fresh.rebuild)),
            "plain": Contender(lambda: load(torch.load(stored.model_only, weights_only=True)),
                               cache.setup(stored.files("model"), fresh.rebuild)),
            "mmap": Contender(lambda: load(torch.load(stored.model_only, mmap=True, weights_only=True)),
                              cache.setup(stored.files("model"), fresh.rebuild)),
        }, rounds)
        case = f"local, {label.split(' + ')[0]}, {cache.label()}"
        rows += faster_rows("4 inference", case, samples, "ours",
                            {"plain": "torch.load + load_state_dict", "mmap": "torch.load(mmap=True) + load_state_dict"})
        rows += faster_rows("4 inference", case.replace("local,", "local mmap=True,"), samples, "ours-mmap",
                            {"mmap": "torch.load(mmap=True) + load_state_dict"})
    return rows


def _bare_copy(run: SimpleNamespace) -> Callable[[], None]:
    """What a snapshot costs at least on one thread: copy every tensor of the run's model and
    optimizer state into buffers allocated once (as a background store reuses its last
    snapshot's memory), one after the other."""
    tensors = [
        tensor
        for state in (run.model.state_dict(), run.optimizer.state_dict())
        for tensor in _tensors(state)
    ]
    buffers = [torch.empty_like(tensor) for tensor in tensors]

    def copy() -> None:
        for buffer, tensor in zip(buffers, tensors):
            buffer.copy_(tensor)

    return copy


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def checkpoint_stall(trained: TrainedModel, label: str, rounds: int) -> list[Row]:
    """Figure 5: how long a checkpoint stops the training loop: ``store_weights(...,
    background=True)`` (snapshot, then upload on a thread) against ``store_weights``, on the
    local store and on mongomock, and against a bare copy of every tensor into buffers allocated
    before, on one thread (the snapshot copies on up to 4). Before each run the previous
    background upload is waited for, untimed."""
    run, counter, rows = _run(trained), itertools.count(1), []
    copy = _bare_copy(run)
    with _local_store() as (local, _):
        for name, store in (("local", local), ("mongomock", MongoWeightsStore(mongomock_client()))):
            def settle(store: Any = store) -> None:
                store.flush()
                for info in store.list_checkpoints("run"):
                    store.remove("run", info.iteration)

            samples = interleaved({
                "background": Contender(lambda: store.store_weights(run, next(counter), background=True), settle),
                "synchronous": Contender(lambda: store.store_weights(run, next(counter)), settle),
                "copy": Contender(copy, settle),
            }, rounds)
            store.flush()
            rows.append(fraction_row("5 checkpoint stall", f"{name}, {label}", samples, "background", "synchronous",
                                     "store_weights (synchronous)", 0.25))
            rows.append(fraction_row("5 checkpoint stall", f"{name}, {label}", samples, "background", "copy",
                                     "one-thread copy of every tensor", 1.25))
    return rows


def timed_rows(size: int, rounds: int, cold: bool, busy: bool, small_tensors: int) -> list[Row]:
    """Every timed figure for a model of ``size`` bytes, and for ``small_tensors`` small
    parameters (0: skipped)."""
    trained = TrainedModel(size)
    label = describe_model(size)
    rows = store_local(trained, label, rounds, busy=False)
    if busy:
        rows += store_local(trained, label, rounds, busy=True)
    rows += store_mongo(trained, label, rounds)
    rows += load_local(trained, label, rounds, cold)
    rows += load_mongo(trained, label, rounds)
    rows += resume(trained, label, rounds, cold)
    rows += inference(trained, label, rounds, cold)
    rows += checkpoint_stall(trained, label, rounds)
    if small_tensors:
        small = TrainedModel(SMALL_CHECKPOINT_BYTES // 3, tensors=small_tensors)
        small_label = describe_small_model(small_tensors)
        rows += store_local(small, small_label, rounds, busy=False)
        rows += store_mongo(small, small_label, rounds)
        rows += load_local(small, small_label, rounds, cold=False)
        rows += load_mongo(small, small_label, rounds)
    return rows
