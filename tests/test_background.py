"""Background stores: the snapshot (what is copied, and how), exit and crash behaviour.

Ordering, error surfacing and snapshot isolation through ``store_weights`` are in the
contract suite (every backend)."""

from __future__ import annotations

import collections
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from dacapo_store import LocalWeightsStore, Weights, background, helper_threads
from dacapo_store.background import snapshot_state
from dacapo_store.testing.contract import ToyRun, assert_state_equal
from dacapo_store.testing.state_values import LOADABLE_VALUES, assert_loaded_equal


def test_a_snapshot_copies_every_tensor_and_container_and_keeps_shared_storages_shared() -> None:
    base = torch.arange(12.0)
    model = {"tied.a": base.view(3, 4), "tied.b": base[4:8], "other": torch.ones(2, dtype=torch.int64)}
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0]}]}
    snapshot = snapshot_state(Weights(model, optimizer))
    snapshot.wait()
    copied, optimizer_copy = snapshot.weights.model, snapshot.weights.optimizer
    assert_state_equal(copied, model)
    assert_state_equal(optimizer_copy, optimizer)
    assert copied["tied.b"].untyped_storage().data_ptr() == copied["tied.a"].untyped_storage().data_ptr()
    assert copied["tied.b"].storage_offset() == 4
    assert copied["tied.a"].untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
    base += 100
    optimizer["state"][0]["exp_avg"] += 1
    optimizer["param_groups"][0]["lr"] = 1.0
    assert torch.equal(copied["tied.b"], torch.arange(4.0, 8.0))
    assert torch.equal(optimizer_copy["state"][0]["exp_avg"], torch.zeros(3))
    assert optimizer_copy["param_groups"][0] == {"lr": 0.1, "betas": (0.9, 0.99), "params": [0]}


@pytest.fixture
def host_buffers_made(monkeypatch) -> list[tuple[int, bool]]:
    """The (bytes, pinned) of every host buffer snapshots make from now on."""
    made: list[tuple[int, bool]] = []
    real = background.host_buffer

    def recording(nbytes, pinned):
        made.append((nbytes, pinned))
        return real(nbytes, pinned)

    monkeypatch.setattr(background, "host_buffer", recording)
    return made


def test_cpu_tensors_are_copied_into_ordinary_memory_and_need_no_wait(host_buffers_made) -> None:
    snapshot = snapshot_state(Weights({"a": torch.ones(3), "b": torch.zeros(2)}, None))
    assert host_buffers_made == [(12, False), (8, False)]
    assert snapshot.weights.optimizer is None
    assert snapshot.wait() is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the pinned-memory path)")
def test_cuda_tensors_are_copied_into_pinned_host_memory() -> None:
    model = {"w": torch.arange(1000.0, device="cuda")}
    snapshot = snapshot_state(Weights(model, None))
    model["w"].add_(1)  # queued after the copy on the same stream
    snapshot.wait()
    copied = snapshot.weights.model["w"]
    assert copied.device.type == "cpu" and copied.is_pinned()
    assert torch.equal(copied, torch.arange(1000.0))


def test_the_next_snapshot_reuses_the_last_ones_memory_once_its_upload_is_done(tmp_path, host_buffers_made) -> None:
    made = host_buffers_made
    store, run = LocalWeightsStore(tmp_path), ToyRun("r")
    run.train_steps(1)  # the optimizer state exists: its storages from now on stay the same
    store.store_weights(run, 1, background=True)
    first = len(made)
    assert first > 0
    for iteration in (2, 3):
        run.train_steps(1)
        store.store_weights(run, iteration, background=True)
        store.flush()
        assert_state_equal(store.retrieve_weights("r", iteration).model, run.model.state_dict())
        assert_state_equal(store.retrieve_weights("r", iteration).optimizer, run.optimizer.state_dict())
    assert len(made) == first  # the same storages: every buffer reused


def _child(script: str, basedir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(basedir)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # starts and kills interpreters
def test_an_upload_in_flight_at_exit_is_finished_and_a_failure_logged(tmp_path) -> None:
    script = """
        import sys
        from dacapo_store import LocalWeightsStore
        from dacapo_store.testing.contract import ToyRun
        store, run = LocalWeightsStore(sys.argv[1]), ToyRun("r")
        store.store_weights(run, 1, background=True)
        store.store_weights(run, 2, background=True)  # waits for 1
        if sys.argv[1].endswith("fail"):
            store.store_weights(run, 2, background=True)  # fails while the interpreter exits
    """
    assert _child(script, tmp_path / "ok").returncode == 0
    assert [c.iteration for c in LocalWeightsStore(tmp_path / "ok").list_checkpoints("r")] == [1, 2]
    failed = _child(script, tmp_path / "fail")
    assert "a background checkpoint store failed" in failed.stderr and "already stored" in failed.stderr


def _killed_mid_upload(basedir: str, ready) -> None:
    """The child: a background store that hangs once its payloads are written (before the
    commit), while the training thread goes on, until the process is killed."""
    store = LocalWeightsStore(basedir)
    store._commit = lambda *args: (ready.set(), threading.Event().wait())
    store.store_weights(ToyRun("r"), 2, background=True)
    threading.Event().wait()


@pytest.mark.slow  # starts and kills interpreters
def test_a_process_killed_mid_upload_leaves_nothing_visible(tmp_path) -> None:
    LocalWeightsStore(tmp_path).store_weights(ToyRun("r"), 1)
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=_killed_mid_upload, args=(str(tmp_path), ready))
    child.start()
    try:
        assert ready.wait(timeout=120), "the child never got to the commit"
    finally:
        child.kill()
        child.join()
    store = LocalWeightsStore(tmp_path)
    assert [c.iteration for c in store.list_checkpoints("r")] == [1]
    assert len(list(store.payload_dir.iterdir())) == 4  # checkpoint 1's two parts, the dead upload's two
    assert store.collect_garbage(older_than=store.stale_after, now=float("inf")).bytes_freed > 0
    assert sorted(p.name for p in store.payload_dir.iterdir()) == sorted(
        part.location for part in store.checkpoint_info("r", 1).parts.values()
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_wait_for_its_parents_upload(tmp_path) -> None:
    store, run = LocalWeightsStore(tmp_path), ToyRun("r")
    release, put_weights = threading.Event(), store.put_weights
    store.put_weights = lambda *args, **kwargs: (release.wait(), put_weights(*args, **kwargs))[1]
    store.store_weights(run, 1, background=True)
    child = os.fork()
    if child == 0:  # the upload thread does not exist here: flush must not wait for it
        store.flush()
        os._exit(0)
    _, status = os.waitpid(child, 0)
    release.set()
    store.flush()
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.latest_iteration("r") == 1


def test_a_large_snapshot_is_copied_exactly_by_several_threads(monkeypatch) -> None:
    """Split over three threads (whichever of them runs which share), the copy is exact."""
    monkeypatch.setattr(helper_threads, "thread_count", lambda: 3)
    monkeypatch.setattr(background, "COPY_SLICE_BYTES", 1000)
    monkeypatch.setattr(background, "PARALLEL_COPY_BYTES", 0)
    shares: list[int] = []  # bytes of each share of the copy
    real = background._copy_all

    def recording(copies):
        shares.append(sum(target.numel() for target, _ in copies))
        real(copies)

    monkeypatch.setattr(background, "_copy_all", recording)
    base = torch.arange(10_000.0)
    model = {"big": base, "odd": torch.arange(777, dtype=torch.int16), "view": base[3:9]}
    snapshot = snapshot_state(Weights(model, {"state": {0: {"m": torch.full((2_500,), 7.0)}}}))
    assert_state_equal(snapshot.weights.model, model)
    assert torch.equal(snapshot.weights.optimizer["state"][0]["m"], torch.full((2_500,), 7.0))
    total = sum(shares)
    assert len(shares) == 3 and total == 40_000 + 777 * 2 + 10_000 and all(size <= total // 3 + 1000 for size in shares)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_copies_with_threads_of_its_own(monkeypatch) -> None:
    """The parent's copy threads do not exist in a forked child (a DataLoader worker, say)."""
    monkeypatch.setattr(helper_threads, "thread_count", lambda: 2)
    monkeypatch.setattr(background, "PARALLEL_COPY_BYTES", 0)
    snapshot_state(Weights({"w": torch.ones(1000)}, None))  # the parent's pool exists now
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        assert pool.apply(_snapshot_sum, (torch.arange(5000.0),)) == float(torch.arange(5000.0).sum())


def _snapshot_sum(tensor: torch.Tensor) -> float:
    return float(snapshot_state(Weights({"w": tensor}, None)).weights.model["w"].sum())


def test_a_snapshot_keeps_the_metadata_that_load_state_dict_reads() -> None:
    model = torch.nn.BatchNorm1d(3)
    state = model.state_dict()
    snapshot = snapshot_state(Weights(state, None))
    assert snapshot.weights.model._metadata == state._metadata


@pytest.mark.slow  # starts and kills interpreters
def test_a_snapshot_taken_while_the_interpreter_shuts_down_copies_on_the_calling_thread() -> None:
    """No new threads start once shutdown began (an atexit "save on exit" hook)."""
    script = textwrap.dedent("""
        import atexit, torch
        from dacapo_store import Weights, background, helper_threads
        helper_threads.thread_count = lambda: 3
        background.PARALLEL_COPY_BYTES = 0
        model = {"w": torch.arange(100_000.0), "v": torch.ones(50_000)}

        def save_on_exit():
            snapshot = background.snapshot_state(Weights(model, None))
            same = all(torch.equal(snapshot.weights.model[k], model[k]) for k in model)
            print("snapshot equal:", same)

        atexit.register(save_on_exit)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "snapshot equal: True" in done.stdout


def test_storages_over_the_same_memory_of_different_sizes_are_snapshotted_apart() -> None:
    big = torch.arange(64.0)
    small = torch.empty(0).set_(big.untyped_storage()[0:32], 0, (8,), (1,))
    for state in ({"small": small, "big": big}, {"big": big, "small": small}):
        copied = snapshot_state(Weights(state, None)).weights.model
        assert torch.equal(copied["big"], big) and torch.equal(copied["small"], big[:8])


def test_a_snapshot_copies_counters_and_metadata_as_values() -> None:
    state = collections.OrderedDict(w=torch.ones(2))
    state._metadata = {"": {"version": 1}}
    counts = collections.Counter(a=2)
    copied = snapshot_state(Weights(state, {"counts": counts})).weights
    state._metadata[""]["version"] = 2
    assert copied.model._metadata == {"": {"version": 1}}
    assert copied.optimizer["counts"] == counts and type(copied.optimizer["counts"]) is collections.Counter


@pytest.mark.parametrize("failing", ["the calling thread's share", "a helper's share"])
def test_a_failed_share_of_a_copy_waits_for_every_share_that_started(monkeypatch, failing: str) -> None:
    monkeypatch.setattr(helper_threads, "thread_count", lambda: 4)
    monkeypatch.setattr(background, "PARALLEL_COPY_BYTES", 0)
    monkeypatch.setattr(background, "COPY_SLICE_BYTES", 1000)
    started: list[int] = []
    finished: list[int] = []
    failing_share = 0 if failing == "the calling thread's share" else 1  # share k copies targets[k]
    real = background._copy_all

    def share(copies):
        first = copies[0][0].data_ptr()
        started.append(first)
        if first == targets[failing_share].data_ptr():
            raise OSError("this share failed")
        real(copies)
        finished.append(first)

    monkeypatch.setattr(background, "_copy_all", share)
    targets = [torch.zeros(4000, dtype=torch.uint8) for _ in range(4)]
    with pytest.raises(OSError, match="this share failed"):
        background.copy_in_parallel([(target, torch.ones(4000, dtype=torch.uint8)) for target in targets])
    assert sorted(finished) == sorted(first for first in started if first != targets[failing_share].data_ptr())


class _Stateful:
    """Stands for a module or an optimizer: ``state_dict()`` returns ``state`` itself (a module's
    state dict holds the module's own tensors)."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def state_dict(self) -> dict:
        return self.state


def change_in_place(value: Any, seen: set[int] | None = None) -> None:
    """Change everything mutable in ``value`` in place, as training and user code may after a
    background store returns: every byte of every tensor and storage (a sparse tensor's values),
    ``requires_grad`` of leaf tensors, tensor attributes (and one added), bytearrays, and every
    container and dict key (an item added to each)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        data = value._values() if value.layout == torch.sparse_coo else value
        data = data.values() if data.layout not in (torch.strided, torch.sparse_coo) else data
        if data.device.type != "meta" and data.untyped_storage().nbytes():
            torch.empty(0, dtype=torch.uint8).set_(data.untyped_storage()).add_(1)
        if value.is_leaf and (value.is_floating_point() or value.is_complex()) and not value.is_quantized:
            value.requires_grad_(not value.requires_grad)
        for item in list(vars(value).values()):
            change_in_place(item, seen)
        value.added_later = True
    elif isinstance(value, (torch.UntypedStorage, torch.TypedStorage)):
        untyped = value.untyped() if isinstance(value, torch.TypedStorage) else value
        torch.empty(0, dtype=torch.uint8).set_(untyped).add_(1)
    elif isinstance(value, bytearray):
        value[:] = bytes((byte + 1) % 256 for byte in value) + b"+"
    elif isinstance(value, dict):
        for key, item in list(value.items()):
            change_in_place(key, seen)
            change_in_place(item, seen)
        if hasattr(value, "__dict__"):
            change_in_place(vars(value), seen)
        value["added later"] = 1
    elif isinstance(value, (list, tuple, set)):
        for item in list(value):
            change_in_place(item, seen)
        if isinstance(value, list):
            value.append("added later")
        elif isinstance(value, set):
            value.add("added later")


@pytest.mark.parametrize("make", LOADABLE_VALUES)
def test_a_background_store_stores_exactly_what_a_synchronous_store_at_the_call_would(
    tmp_path, monkeypatch, make
) -> None:
    """For every kind of value a state dict may hold (met twice: sharing must be kept too),
    changed in place as soon as the background call returns: the same bytes are stored."""
    value = make()
    model = {"weight": torch.ones(2), "extra": value, "again": value}
    optimizer = {"state": {0: {"extra": value}}, "param_groups": [{"lr": 0.1, "params": [0], "extra": value}]}
    store = LocalWeightsStore(tmp_path)
    synchronous = store.put_weights("synchronous", 1, Weights(model, optimizer))
    release, put_weights = threading.Event(), store.put_weights
    monkeypatch.setattr(store, "put_weights", lambda *args, **kwargs: (release.wait(), put_weights(*args, **kwargs))[1])
    run = SimpleNamespace(name="background", model=_Stateful(model), optimizer=_Stateful(optimizer))
    store.store_weights(run, 1, background=True)
    change_in_place(model)
    change_in_place(optimizer)
    release.set()
    store.flush()
    stored = store.checkpoint_info("background", 1)
    assert {part: (info.size, info.digest) for part, info in stored.parts.items()} == {
        part: (info.size, info.digest) for part, info in synchronous.parts.items()
    }
    expected, loaded = store.retrieve_weights("synchronous", 1), store.retrieve_weights("background", 1)
    assert_loaded_equal(loaded.model, expected.model)
    assert_loaded_equal(loaded.optimizer, expected.optimizer)
