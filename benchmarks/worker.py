"""A benchmark worker: one process that times store and load operations for the parent
(:mod:`benchmarks.speed`), one JSON request per stdin line, one JSON reply per stdout line.

It is started by path (``python benchmarks/worker.py``) with the interpreter and ``PYTHONPATH``
of the dacapo-store under test (this checkout, or a previous release in its own venv), so it
imports only dacapo-store's public API (the part 0.5.0 and later share) and, beside this file,
:mod:`workloads` and :mod:`system` (stdlib and torch only). safetensors is imported only by the
baseline cases (the current checkout's worker).

Requests (each reply is ``{"ok": true, ...}`` or ``{"ok": false, "error": traceback}``):

- ``{"op": "hello"}``: ``version``, ``file`` (of ``dacapo_store``) and ``torch``.
- ``{"op": "setup", "workload": NAME, "size": BYTES, "tensors": N, "dir": PATH}``: build the
  trained model and Adam (:class:`workloads.TrainedModel`, the same values in every process
  with the same torch), store it as checkpoint 1 in a local store under ``dir``, and write the
  baselines' files.
- ``{"op": "time", "workload": NAME, "case": CASE, "cold": BOOL}``: run the case's setup
  (untimed; with ``cold``, evict the files the case reads from the page cache), then time its
  action once: ``seconds`` (and, cold, ``resident``: see :func:`_time`). See :data:`CASES`.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import torch

from system import drop_from_page_cache, release_freed_memory, resident_bytes
from workloads import TrainedModel


def _touch(state: Any) -> None:
    """Read every byte of every tensor in ``state`` (a memory-mapped page then counts)."""
    if isinstance(state, torch.Tensor):
        state.sum()
    elif isinstance(state, dict):
        for value in state.values():
            _touch(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            _touch(value)


def _files_under(directory: str) -> list[str]:
    return [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _release_memory() -> None:
    """Give the memory freed by earlier runs back to the system, so a resume faults in fresh
    pages as in a new process (dacapo-store's spare load memory too, where a version keeps one)."""
    gc.collect()
    release_freed_memory()
    try:
        from dacapo_store.payload_memory import release_spare_memory
    except ImportError:
        return
    release_spare_memory()


def _flat(model: dict[str, torch.Tensor], optimizer: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A model and Adam state as a safetensors user would write them: flat tensors, the
    optimizer's param groups as JSON metadata."""
    tensors = {f"model.{key}": value for key, value in model.items()}
    for index, state in optimizer["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = value
    return tensors, {"param_groups": json.dumps(optimizer["param_groups"])}


def _nested(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inverse of :func:`_flat`."""
    model, state = {}, {}
    for key, value in tensors.items():
        part, _, rest = key.partition(".")
        if part == "model":
            model[rest] = value
        else:
            index, _, name = rest.partition(".")
            state.setdefault(int(index), {})[name] = value
    return model, {"state": state, "param_groups": json.loads(metadata["param_groups"])}


class Workload:
    """One trained model stored for every case: checkpoint 1 in a local store, the same state
    as safetensors files (model and optimizer; model only), and memory for the floors."""

    def __init__(self, size: int, tensors: int, directory: str) -> None:
        from dacapo_store import LocalWeightsStore

        self.trained = TrainedModel(size, tensors)
        self.run = self._run(self.trained, self.trained.optimizer)
        self.target = self._existing_run(size, tensors)  # what load_weights loads into
        self.st_target = self._existing_run(size, tensors)  # the same for safetensors' load (its
        # optimizer keeps mapped tensors, which must not be what load_weights writes into)
        self.directory = directory
        self.store_dir = os.path.join(directory, "store")
        self.store = LocalWeightsStore(self.store_dir)
        self.store.store_weights(self.run, 1)
        self.iterations = itertools.count(2)
        self.mongo: Any = None
        self.fresh: SimpleNamespace | None = None
        self.full = os.path.join(directory, "full.safetensors")
        self.model_only = os.path.join(directory, "model.safetensors")
        self.written: list[str] = []
        self._floor_memory: torch.Tensor | None = None
        self._snapshot: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @staticmethod
    def _run(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> SimpleNamespace:
        return SimpleNamespace(name="run", model=model, optimizer=optimizer)

    @classmethod
    def _existing_run(cls, size: int, tensors: int) -> SimpleNamespace:
        """A model and Adam mid-training (other values, optimizer state set)."""
        model = TrainedModel(size, tensors, seed=1)
        return cls._run(model, model.optimizer)

    def _fresh_run(self, optimizer: bool = True) -> SimpleNamespace:
        """A freshly built model (and Adam) shaped like the trained one, gradients set."""
        model = torch.nn.Module()
        for name, parameter in self.trained.named_parameters():
            model.register_parameter(name, torch.nn.Parameter(torch.ones(parameter.shape)))
            model.get_parameter(name).grad = torch.full(parameter.shape, 1e-3)
        return self._run(model, torch.optim.Adam(model.parameters(), lr=1e-3) if optimizer else None)

    def write_baseline_files(self) -> None:
        from safetensors.torch import save_file

        tensors, metadata = _flat(self.trained.state_dict(), self.trained.optimizer.state_dict())
        save_file(tensors, self.full, metadata=metadata)
        save_file(self.trained.state_dict(), self.model_only)
        for path in (self.full, self.model_only):
            _fsync(path)

    # ---- setups (untimed) --------------------------------------------------------------------

    def clean_up(self) -> None:
        """Wait for a background store, remove every checkpoint but 1 and the files written."""
        self.store.flush()
        for info in self.store.list_checkpoints("run"):
            if info.iteration != 1:
                self.store.remove("run", info.iteration)
        while self.written:
            os.unlink(self.written.pop())

    def new_mongo_store(self) -> None:
        from dacapo_store import MongoWeightsStore
        from dacapo_store.testing.mongomock_support import mongomock_client

        self.mongo = MongoWeightsStore(mongomock_client())

    def new_fresh_run(self, optimizer: bool = True) -> None:
        self.fresh = None
        _release_memory()
        self.fresh = self._fresh_run(optimizer)

    def floor_memory(self, size: int) -> torch.Tensor:
        """Preallocated, resident memory of at least ``size`` bytes (as an existing model's)."""
        if self._floor_memory is None or self._floor_memory.numel() < size:
            self._floor_memory = torch.ones(size, dtype=torch.uint8)
        return self._floor_memory[:size]

    def snapshot_buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._snapshot is None:
            tensors = list(_tensors(self.trained.state_dict())) + list(_tensors(self.trained.optimizer.state_dict()))
            self._snapshot = [(torch.empty_like(tensor), tensor) for tensor in tensors]
        return self._snapshot

    # ---- actions (timed) ---------------------------------------------------------------------

    def st_load(self, run: SimpleNamespace, touch_optimizer: bool) -> None:
        """safetensors' load into an existing model and optimizer. ``load_state_dict`` copies
        into the model; the optimizer keeps the mapped tensors, so they are read once (summed)
        where no step follows."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(self.full, "pt") as file:
            metadata = file.metadata()
        model, optimizer = _nested(load_file(self.full), metadata)
        run.model.load_state_dict(model)
        run.optimizer.load_state_dict(optimizer)
        if touch_optimizer:
            _touch(run.optimizer.state_dict()["state"])

    def st_store(self) -> None:
        from safetensors.torch import save_file

        path = os.path.join(self.directory, f"stored-{next(self.iterations)}.safetensors")
        self.written.append(path)
        tensors, metadata = _flat(self.trained.state_dict(), self.trained.optimizer.state_dict())
        save_file(tensors, path, metadata=metadata)
        _fsync(path)

    def floor_read(self, path: str) -> None:
        """The payload's bytes copied once: read into preallocated memory."""
        memory = memoryview(self.floor_memory(os.path.getsize(path)).numpy())
        with open(path, "rb", buffering=0) as file:
            done = 0
            while done < len(memory):
                done += file.readinto(memory[done:done + (1 << 30)])

    def floor_copy(self) -> None:
        """A snapshot's least cost on one thread: every tensor copied into memory allocated once."""
        for buffer, tensor in self.snapshot_buffers():
            buffer.copy_(tensor)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


Case = tuple[Callable[[Workload], list[str]], Callable[[Workload], object]]
"""A case's setup (returns the files a cold run evicts) and its timed action."""

FINISH: dict[str, Callable[[Workload], None]] = {}
"""What runs after a case's timed action, untimed (see :data:`CASES`)."""


def _fresh(optimizer: bool = True) -> Callable[[Workload], list[str]]:
    def setup(w: Workload) -> list[str]:
        w.new_fresh_run(optimizer)
        return _files_under(w.store_dir)
    return setup


def _resume(w: Workload) -> None:
    w.store.load_weights(w.fresh, 1)
    w.fresh.optimizer.step()


def _st_resume(w: Workload) -> None:
    w.st_load(w.fresh, touch_optimizer=False)
    w.fresh.optimizer.step()


def _st_inference(w: Workload) -> None:
    from safetensors.torch import load_file

    w.fresh.model.load_state_dict(load_file(w.model_only))


def _cleaned(w: Workload) -> list[str]:
    w.clean_up()
    return []


def _new_mongo_store(w: Workload) -> list[str]:
    w.new_mongo_store()
    return []


def _st_retrieve(w: Workload) -> None:
    from safetensors.torch import load_file

    _touch(load_file(w.full))


def _files(*names: str, fresh: bool | None = None) -> Callable[[Workload], list[str]]:
    """A setup: a fresh run (with an optimizer or not; ``None``: none), then the baseline
    files ``names`` (attributes of the workload) to evict."""
    def setup(w: Workload) -> list[str]:
        if fresh is not None:
            w.new_fresh_run(optimizer=fresh)
        return [getattr(w, name) for name in names]
    return setup


def _st_load_finish(w: Workload) -> None:
    """Give ``st_target``'s optimizer private copies of the tensors the load left mapped, so
    that it is a model mid-training again and the file's pages can leave the page cache."""
    for state in w.st_target.optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.clone()


def _snapshot_buffers(w: Workload) -> list[str]:
    w.snapshot_buffers()
    return []


CASES: dict[str, Case] = {
    # dacapo-store's public API (both versions)
    "store_weights": (_cleaned, lambda w: w.store.store_weights(w.run, next(w.iterations))),
    "store_weights_mongomock": (_new_mongo_store, lambda w: w.mongo.store_weights(w.run, 1)),
    "load_weights": (lambda w: _files_under(w.store_dir), lambda w: w.store.load_weights(w.target, 1)),
    "retrieve_weights": (lambda w: _files_under(w.store_dir), lambda w: _touch(vars(w.store.retrieve_weights("run", 1)))),
    "resume": (_fresh(), _resume),
    "inference": (_fresh(optimizer=False),
                  lambda w: w.fresh.model.load_state_dict(w.store.retrieve_weights("run", 1, optimizer=False).model)),
    "background_stall": (_cleaned, lambda w: w.store.store_weights(w.run, next(w.iterations), background=True)),
    # safetensors baselines
    "st_store": (_cleaned, lambda w: w.st_store()),
    "st_load": (_files("full"), lambda w: w.st_load(w.st_target, touch_optimizer=True)),
    "st_retrieve": (_files("full"), _st_retrieve),
    "st_resume": (_files("full", fresh=True), _st_resume),
    "st_inference": (_files("model_only", fresh=False), _st_inference),
    # floors
    "floor_read": (_files("full"), lambda w: w.floor_read(w.full)),
    "floor_read_model": (_files("model_only"), lambda w: w.floor_read(w.model_only)),
    "floor_copy": (_snapshot_buffers, lambda w: w.floor_copy()),
}

FINISH["st_load"] = _st_load_finish


def _drop_fresh_run(w: Workload) -> None:
    """Let the fresh run go (and with it any map of a file it holds, which would keep that
    file's pages in the page cache)."""
    w.fresh = None


FINISH.update(dict.fromkeys(("resume", "st_resume", "inference", "st_inference"), _drop_fresh_run))


def _time(workload: Workload, case: str, cold: bool) -> dict[str, Any]:
    """One timed run of ``case``: ``seconds``, and when ``cold``, ``resident``: the bytes of
    the evicted files ``fincore`` still finds in the page cache (``None`` without fincore)."""
    setup, action = CASES[case]
    files = setup(workload)
    reply: dict[str, Any] = {}
    if cold:
        drop_from_page_cache(files)
        reply["resident"] = resident_bytes(files)
    gc.collect()
    start = time.perf_counter()
    action(workload)
    reply["seconds"] = time.perf_counter() - start
    workload.store.flush()  # a background store ends here, untimed, before anything else runs
    FINISH.get(case, lambda w: None)(workload)
    return reply


def main() -> None:
    protocol = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the protocol stream
    torch.set_num_threads(1)
    workloads: dict[str, Workload] = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "hello":
                import dacapo_store

                reply = {"version": getattr(dacapo_store, "__version__", "?"), "file": dacapo_store.__file__,
                         "torch": torch.__version__}
            elif request["op"] == "setup":
                directory = request["dir"]
                shutil.rmtree(directory, ignore_errors=True)
                os.makedirs(directory)
                workload = workloads[request["workload"]] = Workload(request["size"], request["tensors"], directory)
                if request.get("baselines"):
                    workload.write_baseline_files()
                reply = {}
            elif request["op"] == "time":
                reply = _time(workloads[request["workload"]], request["case"], request["cold"])
            else:
                raise ValueError(f"unknown op {request['op']!r}")
            reply["ok"] = True
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()
    for workload in workloads.values():
        workload.store.flush()


if __name__ == "__main__":
    main()
