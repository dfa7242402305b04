"""The store contract suite, written once and run against every backend.

A backend's test module subclasses :class:`StoreContract` and provides two things (the
pattern of zarr-python's ``StoreTests``):

* a ``stores`` fixture returning a fresh, empty ``(WeightsStore, StatsStore)`` pair that share
  one backend (the weights store sees the scores the stats store writes);
* :meth:`StoreContract.flip_payload_byte`, which damages one stored payload in place.

A backend is done when it passes the whole suite.
"""

from __future__ import annotations

import copy
import math
import re
import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dacapo_store import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NoScoreError,
    StatsStore,
    RunTotals,
    TrainingIterationStats,
    Weights,
    WeightsStore,
)
from dacapo_store import serialization
from dacapo_store.digests import DEFAULT_ALGORITHM, algorithm_of
from dacapo_store.errors import CheckpointChangedError
from dacapo_store.serialization import HashingWriter
from dacapo_store.state_checks import MAX_STATE_DEPTH
from dacapo_store.testing.state_values import (
    FOREIGN_PAYLOADS,
    LOADABLE_VALUES,
    REFUSED_VALUES,
    assert_loaded_equal,
)
from dacapo_store.weights_store import STALE_RESERVATION, Reservation


class ToyRun:
    """The smallest run object a weights store accepts: ``name``, ``model``, ``optimizer``."""

    def __init__(self, name: str, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.name = name
        self.model = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)

    def train_steps(self, steps: int = 3) -> None:
        """Take some optimizer steps so that the Adam state is non-trivial."""
        for _ in range(steps):
            self.optimizer.zero_grad()
            self.model(torch.randn(2, 1, 8, 8)).pow(2).mean().backward()
            self.optimizer.step()


def assert_state_equal(actual: Any, expected: Any) -> None:
    """Recursively compare state dicts (tensors exactly, everything else by ==)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        assert torch.equal(actual.cpu(), expected.cpu())
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys()
        for key in expected:
            assert_state_equal(actual[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_state_equal(a, e)
    else:
        assert actual == expected


def fail_with(error: BaseException) -> Any:
    """A stand-in for a method or function that raises ``error`` whatever it is called with."""

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise error

    return failing


def brute_force_best(rows: list[tuple[int, dict, float, bool]]) -> int | None:
    """Reference for "best": rows of (iteration, parameters, value, higher_is_better)."""
    ranked = [
        ((value if higher else -value), -iteration)
        for iteration, _, value, higher in rows
        if not math.isnan(value)
    ]
    return -max(ranked)[1] if ranked else None


BAD_NAMES = [
    ("", ValueError),
    ("with\x00nul", ValueError),
    ("$where", ValueError),
    ("x" * 5000, ValueError),
    (None, TypeError),
    (42, TypeError),
    (b"bytes", TypeError),
    ({"$gt": ""}, TypeError),
    ("lone\ud800surrogate", ValueError),
]
BAD_ITERATIONS = [(-1, ValueError), (True, TypeError), (1.5, TypeError), ("3", TypeError), (2**63, ValueError)]


def _nested(leaf: Any, depth: int) -> Any:
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


def _self_referencing() -> dict:
    parameters: dict = {"threshold": 0.5}
    parameters["again"] = parameters
    return parameters


class StoreContract:
    """Every rule of the weights and stats store contracts. Subclass per backend."""

    @pytest.fixture
    def stores(self) -> tuple[WeightsStore, StatsStore]:
        raise NotImplementedError("a backend's test class provides the `stores` fixture")

    def flip_payload_byte(self, weights_store: WeightsStore, location: str) -> None:
        """Flip one byte in the middle of the payload stored at ``location``."""
        raise NotImplementedError

    @pytest.fixture
    def weights_store(self, stores: tuple[WeightsStore, StatsStore]) -> WeightsStore:
        return stores[0]

    @pytest.fixture
    def stats_store(self, stores: tuple[WeightsStore, StatsStore]) -> StatsStore:
        return stores[1]

    @pytest.fixture
    def run(self) -> ToyRun:
        run = ToyRun("run-" + uuid.uuid4().hex[:8])
        run.train_steps()
        return run

    # ---- round trips ------------------------------------------------------------------------

    def test_round_trip_model_and_adam_state(self, weights_store: WeightsStore, run: ToyRun) -> None:
        info = weights_store.store_weights(run, 3)
        assert (info.run, info.iteration) == (run.name, 3)
        assert set(info.parts) == {"model", "optimizer"}
        assert info.size == sum(p.size for p in info.parts.values()) > 0
        assert all(algorithm_of(p.digest) == DEFAULT_ALGORITHM for p in info.parts.values())
        weights = weights_store.retrieve_weights(run.name, 3)
        assert isinstance(weights, Weights)
        assert_state_equal(weights.model, run.model.state_dict())
        assert_state_equal(weights.optimizer, run.optimizer.state_dict())
        assert weights.optimizer["state"], "Adam state after steps must not be empty"

    def test_load_weights_into_fresh_run_gives_identical_outputs_and_steps(
        self, weights_store: WeightsStore, run: ToyRun
    ) -> None:
        weights_store.store_weights(run, 7)
        fresh = ToyRun(run.name, seed=123)
        x = torch.randn(1, 1, 8, 8)
        assert not torch.equal(fresh.model(x), run.model(x))
        weights_store.load_weights(fresh, 7)
        assert torch.equal(fresh.model(x), run.model(x))
        assert_state_equal(fresh.optimizer.state_dict(), run.optimizer.state_dict())
        torch.manual_seed(5)
        run.train_steps(1)
        torch.manual_seed(5)
        fresh.train_steps(1)
        assert torch.equal(fresh.model(x), run.model(x)), "resumed optimizer must step identically"

    def test_retrieve_accepts_run_object_or_name(self, weights_store: WeightsStore, run: ToyRun) -> None:
        weights_store.store_weights(run, 1)
        by_object = weights_store.retrieve_weights(run, 1)
        by_name = weights_store.retrieve_weights(run.name, 1)
        assert_state_equal(by_object.model, by_name.model)

    def test_map_location_is_honoured(self, weights_store: WeightsStore, run: ToyRun) -> None:
        weights_store.store_weights(run, 1)
        weights = weights_store.retrieve_weights(run.name, 1, map_location="meta")
        assert all(t.device.type == "meta" for t in weights.model.values())

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
    def test_an_unavailable_device_is_not_blamed_on_the_checkpoint(
        self, weights_store: WeightsStore, run: ToyRun
    ) -> None:
        weights_store.store_weights(run, 1)
        with pytest.raises(RuntimeError) as caught:
            weights_store.retrieve_weights(run.name, 1, map_location="cuda")
        assert not isinstance(caught.value, CorruptCheckpointError)
        weights_store.verify(run.name, 1)

    def test_model_only_retrieval(self, weights_store: WeightsStore, run: ToyRun) -> None:
        weights_store.store_weights(run, 2)
        weights = weights_store.retrieve_weights(run.name, 2, optimizer=False)
        assert weights.optimizer is None
        assert_state_equal(weights.model, run.model.state_dict())

    def test_model_only_checkpoint(self, weights_store: WeightsStore, run: ToyRun) -> None:
        info = weights_store.put_weights(run.name, 4, Weights(run.model.state_dict(), None))
        assert set(info.parts) == {"model"}
        assert weights_store.retrieve_weights(run.name, 4).optimizer is None

    # ---- listing, latest, remove ------------------------------------------------------------

    def test_latest_iteration_is_numeric_and_per_run(self, weights_store: WeightsStore, run: ToyRun) -> None:
        assert weights_store.latest_iteration(run) is None
        for iteration in (2, 10, 9):
            weights_store.store_weights(run, iteration)
        assert weights_store.latest_iteration(run) == 10
        assert weights_store.latest_iteration(run.name + "-other") is None
        assert [c.iteration for c in weights_store.list_checkpoints(run.name)] == [2, 9, 10]
        assert run.name in weights_store.list_runs()

    def test_remove(self, weights_store: WeightsStore, run: ToyRun) -> None:
        for iteration in (1, 2):
            weights_store.store_weights(run, iteration)
        weights_store.remove(run.name, 2)
        assert weights_store.latest_iteration(run) == 1
        with pytest.raises(CheckpointNotFoundError):
            weights_store.retrieve_weights(run.name, 2)
        weights_store.store_weights(run, 2)  # the iteration is free again
        assert weights_store.latest_iteration(run) == 2

    @pytest.mark.parametrize("action", ["retrieve", "remove", "load", "verify"])
    def test_missing_checkpoint_is_file_not_found_and_value_error(
        self, weights_store: WeightsStore, run: ToyRun, action: str
    ) -> None:
        call = {
            "retrieve": lambda: weights_store.retrieve_weights(run.name, 5),
            "remove": lambda: weights_store.remove(run.name, 5),
            "load": lambda: weights_store.load_weights(run, 5),
            "verify": lambda: weights_store.verify(run.name, 5),
        }[action]
        with pytest.raises(CheckpointNotFoundError) as caught:
            call()
        assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, ValueError)
        assert run.name in str(caught.value) and "5" in str(caught.value)

    # ---- one writer wins ----------------------------------------------------------------------

    def test_storing_an_existing_checkpoint_fails_and_keeps_the_original(
        self, weights_store: WeightsStore, run: ToyRun
    ) -> None:
        original = {k: v.clone() for k, v in run.model.state_dict().items()}
        first = weights_store.store_weights(run, 5)
        run.train_steps(2)
        with pytest.raises(CheckpointExistsError) as caught:
            weights_store.store_weights(run, 5)
        assert isinstance(caught.value, ValueError)
        assert weights_store.list_checkpoints(run.name) == [first]
        assert_state_equal(weights_store.retrieve_weights(run.name, 5).model, original)
        assert weights_store.verify(run.name, 5) == first

    def test_threads_racing_on_one_checkpoint_have_exactly_one_winner(
        self, weights_store: WeightsStore, run: ToyRun
    ) -> None:
        outcomes: list[str] = []
        barrier = threading.Barrier(6)

        def writer() -> None:
            barrier.wait()
            try:
                weights_store.store_weights(run, 8)
                outcomes.append("won")
            except CheckpointExistsError:
                outcomes.append("lost")

        threads = [threading.Thread(target=writer) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["lost"] * 5 + ["won"]
        assert [c.iteration for c in weights_store.list_checkpoints(run.name)] == [8]
        weights_store.verify(run.name, 8)

    # ---- overwrite --------------------------------------------------------------------------

    def test_overwrite_replaces_the_checkpoint_and_deletes_the_old_payloads(
        self, weights_store: WeightsStore, run: ToyRun
    ) -> None:
        old = weights_store.store_weights(run, 4)
        run.train_steps(2)
        new = weights_store.store_weights(run, 4, overwrite=True)
        assert weights_store.list_checkpoints(run.name) == [new]
        assert {p.location for p in new.parts.values()}.isdisjoint(p.location for p in old.parts.values())
        assert_state_equal(weights_store.retrieve_weights(run.name, 4).model, run.model.state_dict())
        assert_state_equal(weights_store.retrieve_weights(run.name, 4).optimizer, run.optimizer.state_dict())
        assert weights_store.verify(run.name, 4) == new
        assert weights_store.collect_garbage(dry_run=True).items == ()  # nothing of the old one is left

    def test_overwrite_without_a_stored_checkpoint_is_a_plain_store(
        self, weights_store: WeightsStore, run: ToyRun
    ) -> None:
        info = weights_store.store_weights(run, 2, overwrite=True)
        assert weights_store.list_checkpoints(run.name) == [info]
        weights_store.put_weights(run.name, 3, Weights(run.model.state_dict(), None), overwrite=True)
        assert weights_store.latest_iteration(run) == 3

    def test_overwrite_must_be_a_bool(self, weights_store: WeightsStore, run: ToyRun) -> None:
        with pytest.raises(TypeError, match="overwrite"):
            weights_store.store_weights(run, 1, overwrite="yes")  # type: ignore[arg-type]
        assert weights_store.list_checkpoints(run.name) == []

    def test_readers_see_the_old_checkpoint_while_the_new_one_is_uploaded(
        self, weights_store: WeightsStore, run: ToyRun, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        old_model = {k: v.clone() for k, v in run.model.state_dict().items()}
        old = weights_store.store_weights(run, 5)
        run.train_steps(2)
        seen = []
        real_commit = weights_store._commit

        def read_then_commit(reservation: Any, parts: Any) -> Any:
            seen.append((weights_store.list_checkpoints(run.name), weights_store.retrieve_weights(run.name, 5)))
            with pytest.raises(CheckpointExistsError, match="being replaced"):
                weights_store.store_weights(run, 5, overwrite=True)
            return real_commit(reservation, parts)

        monkeypatch.setattr(weights_store, "_commit", read_then_commit)
        weights_store.store_weights(run, 5, overwrite=True)
        listed, weights = seen[0]
        assert listed == [old]
        assert_state_equal(weights.model, old_model)

    def test_a_reader_whose_payloads_are_replaced_under_it_reads_the_new_checkpoint(
        self, weights_store: WeightsStore, run: ToyRun, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        weights_store.store_weights(run, 6)
        run.train_steps(2)
        real_load = weights_store._load_part
        replaced = []

        def replaced_before_the_read(info: Any, part: str, *options: Any) -> Any:
            if not replaced:
                replaced.append(weights_store.store_weights(run, 6, overwrite=True))
            return real_load(info, part, *options)

        monkeypatch.setattr(weights_store, "_load_part", replaced_before_the_read)
        weights = weights_store.retrieve_weights(run.name, 6)
        assert_state_equal(weights.model, run.model.state_dict())
        assert_state_equal(weights.optimizer, run.optimizer.state_dict())

    def test_a_failed_overwrite_keeps_the_old_checkpoint(
        self, weights_store: WeightsStore, run: ToyRun, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        old_model = {k: v.clone() for k, v in run.model.state_dict().items()}
        old = weights_store.store_weights(run, 7)
        run.train_steps(1)
        with monkeypatch.context() as patch:
            patch.setattr(HashingWriter, "_forward", fail_with(OSError("injected")))
            with pytest.raises(OSError, match="injected"):
                weights_store.store_weights(run, 7, overwrite=True)
        assert weights_store.list_checkpoints(run.name) == [old]
        assert_state_equal(weights_store.retrieve_weights(run.name, 7).model, old_model)
        assert weights_store.collect_garbage(dry_run=True).items == ()
        weights_store.store_weights(run, 7, overwrite=True)  # the claim was dropped
        assert_state_equal(weights_store.retrieve_weights(run.name, 7).model, run.model.state_dict())

    @pytest.mark.parametrize("collect_garbage", [False, True], ids=["remove", "remove then gc"])
    def test_a_checkpoint_removed_while_it_is_overwritten_is_stored_anew(
        self, weights_store: WeightsStore, run: ToyRun, monkeypatch: pytest.MonkeyPatch, collect_garbage: bool
    ) -> None:
        """The remove is ordered before the overwrite: the old checkpoint is gone at once, the
        live upload goes on (its heartbeats hold; gc leaves it alone) and its commit stores the
        new checkpoint."""
        weights_store.store_weights(run, 8)
        run.train_steps(1)
        if not collect_garbage:  # a heartbeat at every write (with gc: none, gc's own checks only)
            monkeypatch.setattr(type(weights_store), "heartbeat_every", 0.0)
        writers: list[HashingWriter] = []
        collected = []
        real_forward = HashingWriter._forward

        def removed_in_the_optimizer_part(writer: HashingWriter, view: memoryview) -> None:
            if writer not in writers:
                writers.append(writer)
                if len(writers) == 2:  # the model part is written, the optimizer part is being written
                    weights_store.remove(run.name, 8)
                    assert weights_store.list_checkpoints(run.name) == []
                    if collect_garbage:
                        collected.append(weights_store.collect_garbage(older_than=weights_store.stale_after))
            real_forward(writer, view)

        monkeypatch.setattr(HashingWriter, "_forward", removed_in_the_optimizer_part)
        info = weights_store.store_weights(run, 8, overwrite=True)
        monkeypatch.undo()
        assert len(writers) == 2
        assert [item for report in collected for item in report.items] == []
        assert weights_store.list_checkpoints(run.name) == [info]
        stored = weights_store.retrieve_weights(run.name, 8)
        assert_state_equal(stored.model, run.model.state_dict())
        assert_state_equal(stored.optimizer, run.optimizer.state_dict())
        assert weights_store.collect_garbage(dry_run=True).items == ()

    def test_a_checkpoint_removed_just_before_its_overwrite_commits_is_stored_anew(
        self, weights_store: WeightsStore, run: ToyRun, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        weights_store.store_weights(run, 8)
        run.train_steps(1)
        real_commit = weights_store._commit

        def removed_then_commit(reservation: Any, parts: Any) -> Any:
            weights_store.remove(run.name, 8)
            return real_commit(reservation, parts)

        monkeypatch.setattr(weights_store, "_commit", removed_then_commit)
        info = weights_store.store_weights(run, 8, overwrite=True)
        assert weights_store.list_checkpoints(run.name) == [info]
        assert_state_equal(weights_store.retrieve_weights(run.name, 8).model, run.model.state_dict())
        assert weights_store.collect_garbage(dry_run=True).items == ()

    def test_a_commit_whose_reply_and_clean_up_both_failed_is_kept_by_the_later_clean_up(
        self, weights_store: WeightsStore, run: ToyRun, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real_commit, real_find = weights_store._commit, weights_store._find
        lookups: list[str] = []

        def commit_then_lose_the_reply(reservation: Any, parts: Any) -> Any:
            real_commit(reservation, parts)
            raise ConnectionError("the commit's reply was lost")

        def catalog_unreachable_once(name: str, iteration: int) -> Any:
            lookups.append(name)
            if len(lookups) == 1:
                raise ConnectionError("the catalog cannot be reached for the clean-up")
            return real_find(name, iteration)

        monkeypatch.setattr(weights_store, "_commit", commit_then_lose_the_reply)
        monkeypatch.setattr(weights_store, "_find", catalog_unreachable_once)
        with pytest.raises(ConnectionError, match="reply was lost"):
            weights_store.store_weights(run, 4)
        monkeypatch.undo()
        weights_store.store_weights(run, 5)  # the next write retries the clean-up of checkpoint 4
        assert [info.iteration for info in weights_store.list_checkpoints(run.name)] == [4, 5]
        assert_state_equal(weights_store.retrieve_weights(run.name, 4).model, run.model.state_dict())
        assert weights_store.collect_garbage(dry_run=True).items == ()

    @pytest.mark.parametrize("read", ["retrieve_weights", "verify"])
    def test_a_reader_of_a_checkpoint_overwritten_at_every_attempt_gets_a_retryable_error_not_corrupt(
        self, weights_store: WeightsStore, run: ToyRun, monkeypatch: pytest.MonkeyPatch, read: str
    ) -> None:
        weights_store.store_weights(run, 3)
        method = "_load_part" if read == "retrieve_weights" else "_verify_part"
        real_read = getattr(weights_store, method)

        def overwritten_before_the_read(info: Any, part: str, *options: Any) -> Any:
            if part == "model":  # a writer overwrites it as often as a read takes
                run.train_steps(1)
                weights_store.store_weights(run, 3, overwrite=True)
            return real_read(info, part, *options)

        monkeypatch.setattr(weights_store, method, overwritten_before_the_read)
        with pytest.raises(CheckpointChangedError, match="checkpoint 3 of run .* was replaced 3 times while it was being read") as caught:
            getattr(weights_store, read)(run.name, 3)
        assert not isinstance(caught.value, CorruptCheckpointError)
        monkeypatch.undo()  # the overwrites stop: the same call reads the newest checkpoint
        getattr(weights_store, read)(run.name, 3)
        assert_state_equal(weights_store.retrieve_weights(run.name, 3).model, run.model.state_dict())

    def test_an_abandoned_replacement_is_taken_over_and_collected(
        self, weights_store: WeightsStore, run: ToyRun, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        old = weights_store.store_weights(run, 9)
        with monkeypatch.context() as patch:  # a writer on another host dies mid-replacement
            patch.setattr("dacapo_store.owner.socket.gethostname", lambda: "another-host")
            patch.setattr(weights_store, "_abandon", lambda reservation: None)
            patch.setattr(weights_store, "_commit", fail_with(RuntimeError("the writer died")))
            with pytest.raises(RuntimeError, match="the writer died"):
                weights_store.store_weights(run, 9, overwrite=True)
        assert weights_store.list_checkpoints(run.name) == [old]
        with pytest.raises(CheckpointExistsError, match="being replaced"):
            weights_store.store_weights(run, 9, overwrite=True)
        later = time.time() + 2 * weights_store.stale_after
        report = weights_store.collect_garbage(older_than=weights_store.stale_after, now=later)
        assert [item.kind for item in report.items] == [STALE_RESERVATION]
        assert weights_store.list_checkpoints(run.name) == [old]
        weights_store.verify(run.name, 9)
        weights_store.store_weights(run, 9, overwrite=True)
        assert weights_store.collect_garbage(dry_run=True).items == ()

    # ---- all or nothing -------------------------------------------------------------------------

    @pytest.mark.parametrize("phase", ["first byte", "inside the model part", "inside the optimizer part"])
    def test_failure_mid_write_leaves_no_visible_checkpoint(
        self, weights_store: WeightsStore, run: ToyRun, monkeypatch: pytest.MonkeyPatch, phase: str
    ) -> None:
        first = weights_store.store_weights(run, 1)
        model_size = first.parts["model"].size
        fail_after_bytes = {
            "first byte": 0,
            "inside the model part": model_size // 2,
            "inside the optimizer part": model_size + first.parts["optimizer"].size // 2,
        }[phase]
        written = [0]
        real_forward = HashingWriter._forward

        def failing_forward(self: HashingWriter, view: memoryview) -> None:
            if written[0] + view.nbytes > fail_after_bytes:
                raise OSError("injected failure")
            written[0] += view.nbytes
            real_forward(self, view)

        monkeypatch.setattr(HashingWriter, "_forward", failing_forward)
        with pytest.raises(OSError, match="injected failure"):
            weights_store.store_weights(run, 2)
        monkeypatch.undo()
        assert weights_store.latest_iteration(run) == 1
        assert [c.iteration for c in weights_store.list_checkpoints(run.name)] == [1]
        with pytest.raises(CheckpointNotFoundError):
            weights_store.retrieve_weights(run.name, 2)
        weights_store.store_weights(run, 2)  # the failed writer left no reservation behind
        assert weights_store.latest_iteration(run) == 2

    # ---- background stores ----------------------------------------------------------------

    def test_background_store_stores_a_snapshot_taken_at_the_call(
        self, weights_store: WeightsStore, run: ToyRun, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        expected_model = {key: value.clone() for key, value in run.model.state_dict().items()}
        expected_optimizer = copy.deepcopy(run.optimizer.state_dict())
        release, put_weights = threading.Event(), weights_store.put_weights

        def held_put_weights(*args: Any, **kwargs: Any) -> Any:
            release.wait()  # the upload starts only after the model was changed
            return put_weights(*args, **kwargs)

        monkeypatch.setattr(weights_store, "put_weights", held_put_weights)
        future = weights_store.store_weights(run, 4, background=True)
        run.train_steps(2)  # changes the model and the optimizer state in place
        release.set()
        weights_store.flush()
        assert future.result().iteration == 4
        stored = weights_store.retrieve_weights(run.name, 4)
        assert_state_equal(stored.model, expected_model)
        assert_state_equal(stored.optimizer, expected_optimizer)

    def test_background_stores_run_one_at_a_time_in_call_order(
        self, weights_store: WeightsStore, run: ToyRun, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        started, in_flight, most = [], [0], [0]
        lock, put_weights = threading.Lock(), weights_store.put_weights

        def counting_put_weights(name: str, iteration: int, weights: Weights, **options: Any) -> Any:
            with lock:
                started.append(iteration)
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
            try:
                return put_weights(name, iteration, weights, **options)
            finally:
                with lock:
                    in_flight[0] -= 1

        monkeypatch.setattr(weights_store, "put_weights", counting_put_weights)
        futures = [weights_store.store_weights(run, iteration, background=True) for iteration in (3, 1, 2)]
        weights_store.store_weights(run, 4)  # a synchronous store waits for the one in flight too
        assert (started, most[0]) == ([3, 1, 2, 4], 1)
        assert [future.result().iteration for future in futures] == [3, 1, 2]
        assert [c.iteration for c in weights_store.list_checkpoints(run.name)] == [1, 2, 3, 4]
        weights_store.flush()  # nothing in flight: returns

    def test_a_background_store_can_overwrite(self, weights_store: WeightsStore, run: ToyRun) -> None:
        weights_store.store_weights(run, 2)
        run.train_steps(1)
        future = weights_store.store_weights(run, 2, overwrite=True, background=True)
        weights_store.flush()
        assert future.result() == weights_store.checkpoint_info(run.name, 2)
        assert_state_equal(weights_store.retrieve_weights(run.name, 2).model, run.model.state_dict())

    def test_a_background_store_refuses_an_unloadable_state_at_the_call(
        self, weights_store: WeightsStore, run: ToyRun
    ) -> None:
        run.optimizer.param_groups[0]["lr"] = np.float64(0.01)
        with pytest.raises(TypeError, match="weights_only"):
            weights_store.store_weights(run, 1, background=True)
        weights_store.flush()  # nothing was submitted
        assert weights_store.latest_iteration(run) is None

    @pytest.mark.parametrize("surfaces_at", ["next store", "flush"])
    def test_a_failed_background_store_raises_at_the_next_store_or_flush_once(
        self, weights_store: WeightsStore, run: ToyRun, surfaces_at: str
    ) -> None:
        original = weights_store.store_weights(run, 5)
        run.train_steps(1)
        weights_store.store_weights(run, 5, background=True)  # already stored: fails in the background
        with pytest.raises(CheckpointExistsError):
            if surfaces_at == "flush":
                weights_store.flush()
            else:
                weights_store.store_weights(run, 6, background=True)
        weights_store.flush()  # raised once
        assert weights_store.checkpoint_info(run.name, 5) == original
        assert weights_store.latest_iteration(run) == 5  # the call that raised stored nothing
    # ---- every stored checkpoint loads -----------------------------------------------------

    @pytest.mark.parametrize("make", LOADABLE_VALUES)
    def test_every_value_a_weights_only_load_accepts_is_stored_and_read_back(
        self, weights_store: WeightsStore, make: Any
    ) -> None:
        model = {"weight": torch.ones(2), "extra": make()}
        optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0], "extra": make()}]}
        weights_store.put_weights("values", 1, Weights(model, optimizer))
        loaded = weights_store.retrieve_weights("values", 1)
        assert_loaded_equal(loaded.model, model)
        assert_loaded_equal(loaded.optimizer, optimizer)

    @pytest.mark.parametrize("part", ["model", "optimizer"])
    @pytest.mark.parametrize("make", REFUSED_VALUES)
    def test_a_value_a_weights_only_load_refuses_is_refused_before_anything_is_stored(
        self, weights_store: WeightsStore, make: Any, part: str
    ) -> None:
        value = make()
        state = {"weight": torch.ones(2), "extra": value}
        weights = Weights(state, None) if part == "model" else Weights({"weight": torch.ones(2)}, state)
        with pytest.raises(TypeError) as caught:
            weights_store.put_weights("values", 1, weights)
        message = str(caught.value)
        assert f"weights.{part}" in message and "weights_only=True" in message and "nothing was stored" in message
        self.assert_nothing_stored(weights_store, "values")
        weights_store.put_weights("values", 1, Weights({"weight": torch.ones(2)}, None))  # the key is free

    def test_a_numpy_learning_rate_is_refused_naming_its_path_and_the_fix(
        self, weights_store: WeightsStore, run: ToyRun
    ) -> None:
        run.optimizer.param_groups[0]["lr"] = np.float64(0.01)  # as some LR schedules leave it
        with pytest.raises(TypeError) as caught:
            weights_store.store_weights(run, 1)
        assert str(caught.value).startswith(
            "weights.optimizer['param_groups'][0]['lr'] is a numpy.float64 (np.float64(0.01))"
        )
        assert "float(x)" in str(caught.value)
        self.assert_nothing_stored(weights_store, run.name)
        run.optimizer.param_groups[0]["lr"] = 0.01
        weights_store.store_weights(run, 1)  # fixed: stored and read back
        assert weights_store.retrieve_weights(run, 1).optimizer["param_groups"][0]["lr"] == 0.01

    def test_a_state_nested_too_deep_is_refused_before_anything_is_stored(
        self, weights_store: WeightsStore
    ) -> None:
        state: dict = {}
        inner = state
        for _ in range(MAX_STATE_DEPTH + 1):
            inner["a"] = {}
            inner = inner["a"]
        with pytest.raises(ValueError, match="levels deep"):
            weights_store.put_weights("values", 1, Weights(state, None))
        self.assert_nothing_stored(weights_store, "values")

    @staticmethod
    def assert_nothing_stored(weights_store: WeightsStore, run: str) -> None:
        """No checkpoint, no reservation and no payload of ``run`` (a garbage scan that would
        count every pending upload as stale finds nothing)."""
        assert weights_store.list_runs() == [] and weights_store.latest_iteration(run) is None
        far_future = time.time() + 100 * weights_store.stale_after
        report = weights_store.collect_garbage(older_than=weights_store.stale_after, dry_run=True, now=far_future)
        assert report.items == ()

    # ---- integrity --------------------------------------------------------------------------------

    @pytest.mark.parametrize("part", ["model", "optimizer"])
    def test_flipped_byte_is_detected(self, weights_store: WeightsStore, run: ToyRun, part: str) -> None:
        info = weights_store.store_weights(run, 6)
        self.flip_payload_byte(weights_store, info.parts[part].location)
        with pytest.raises(CorruptCheckpointError) as caught:
            weights_store.retrieve_weights(run.name, 6)
        assert run.name in str(caught.value) and "6" in str(caught.value)
        with pytest.raises(CorruptCheckpointError):
            weights_store.verify(run.name, 6)

    @pytest.mark.parametrize("make_payload", FOREIGN_PAYLOADS)
    def test_a_foreign_payload_with_a_matching_digest_is_corrupt(
        self, weights_store: WeightsStore, run: ToyRun, monkeypatch: pytest.MonkeyPatch, make_payload: Any
    ) -> None:
        payload = make_payload()

        def planting_save(state: Any, file: Any) -> None:  # the catalog records its true digest
            file.write(payload)

        monkeypatch.setenv(serialization.PAYLOAD_FORMAT_VARIABLE, "torch")  # written by torch.save,
        monkeypatch.setattr(torch, "save", planting_save)  # which is how such a payload is written
        weights_store.put_weights(run.name, 6, Weights(run.model.state_dict(), None))
        monkeypatch.undo()
        weights_store.verify(run.name, 6)  # size and digest match what was planted
        with pytest.raises(CorruptCheckpointError, match=rf"checkpoint 6 of run '{run.name}' \(model part\)"):
            weights_store.retrieve_weights(run.name, 6)

    # ---- best ---------------------------------------------------------------------------------

    def test_retrieve_best_reads_what_the_stats_store_wrote(
        self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun
    ) -> None:
        for iteration, f1, loss in [(10, 0.5, 0.9), (20, 0.8, 0.4), (30, 0.7, 0.2)]:
            stats_store.store_validation_scores(
                run, iteration, "validate", {"f1": f1, "loss": loss}, {"f1": True, "loss": False}
            )
        assert weights_store.retrieve_best(run, "validate", "f1") == 20
        assert weights_store.retrieve_best(run.name, "validate", "loss") == 30
        best = stats_store.best_validation_score(run, "validate", "loss")
        assert (best.iteration, best.value, best.higher_is_better) == (30, 0.2, False)

    def test_load_best(self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun) -> None:
        weights_store.store_weights(run, 10)
        expected = {k: v.clone() for k, v in run.model.state_dict().items()}
        run.train_steps(2)
        weights_store.store_weights(run, 20)
        stats_store.store_validation_scores(run, 10, "d", {"iou": 0.9}, {"iou": True})
        stats_store.store_validation_scores(run, 20, "d", {"iou": 0.1}, {"iou": True})
        fresh = ToyRun(run.name, seed=9)
        assert weights_store.load_best(fresh, "d", "iou") == 10
        assert_state_equal(fresh.model.state_dict(), expected)

    def test_best_nan_never_wins_and_ties_go_to_earliest(
        self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun
    ) -> None:
        for iteration, value in [(5, math.nan), (10, 0.3), (15, 0.3), (20, math.nan)]:
            stats_store.store_validation_scores(run, iteration, "d", {"c": value}, {"c": True})
        assert weights_store.retrieve_best(run, "d", "c") == 10

    def test_best_spans_parameter_sets(self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun) -> None:
        stats_store.store_validation_scores(run, 10, "d", {"f1": 0.6}, {"f1": True}, {"threshold": 0.5})
        stats_store.store_validation_scores(run, 20, "d", {"f1": 0.4}, {"f1": True}, {"threshold": 0.5})
        stats_store.store_validation_scores(run, 20, "d", {"f1": 0.9}, {"f1": True}, {"threshold": 0.3})
        best = stats_store.best_validation_score(run, "d", "f1")
        assert (best.iteration, best.value, dict(best.parameters)) == (20, 0.9, {"threshold": 0.3})
        assert weights_store.retrieve_best(run, "d", "f1") == 20

    def test_best_accepts_a_dataset_object(
        self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun
    ) -> None:
        """DaCapo passes its dataset objects where a dataset name is expected."""

        class Dataset:
            name = "validate"

        for iteration, value in [(10, 0.2), (20, 0.7)]:
            stats_store.store_validation_scores(run, iteration, "validate", {"f1": value}, {"f1": True})
        assert weights_store.retrieve_best(run, Dataset(), "f1") == 20
        assert stats_store.best_validation_score(run, Dataset(), "f1").iteration == 20
        run.train_steps(1)
        weights_store.store_weights(run, 20)
        assert weights_store.load_best(run, Dataset(), "f1") == 20

    @pytest.mark.parametrize("scores", [[], [math.nan, math.nan]])
    def test_no_usable_score_is_a_value_and_lookup_error(
        self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun, scores: list[float]
    ) -> None:
        for iteration, value in enumerate(scores):
            stats_store.store_validation_scores(run, iteration, "d", {"c": value}, {"c": True})
        for call in (
            lambda: weights_store.retrieve_best(run, "d", "c"),
            lambda: stats_store.best_validation_score(run, "d", "c"),
        ):
            with pytest.raises(NoScoreError) as caught:
                call()
            assert isinstance(caught.value, ValueError) and isinstance(caught.value, LookupError)

    def test_an_unknown_dataset_or_criterion_names_the_ones_that_exist(
        self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun
    ) -> None:
        stats_store.store_validation_scores(run, 1, "val", {"dice": 0.5, "f1": 0.7}, {"dice": True, "f1": True})
        stats_store.store_validation_scores(run, 1, "test", {"dice": 0.4}, {"dice": True})
        stats_store.store_validation_scores(run, 1, "nan", {"dice": math.nan}, {"dice": True})
        expected = {
            ("vall", "dice"): "no validation scores for dataset 'vall'; its scored datasets: 'nan', 'test', 'val'",
            ("val", "dise"): "no validation scores for criterion 'dise' on dataset 'val'; its criteria there: 'dice', 'f1'",
            ("nan", "dice"): "no non-NaN validation score for dataset 'nan', criterion 'dice'",
        }
        for (dataset, criterion), message in expected.items():
            for call in (weights_store.retrieve_best, stats_store.best_validation_score):
                with pytest.raises(NoScoreError, match=re.escape(message)) as caught:
                    call(run, dataset, criterion)
                assert isinstance(caught.value, ValueError) and isinstance(caught.value, LookupError)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors])
    @given(
        rows=st.lists(
            st.tuples(
                st.integers(0, 6),
                st.sampled_from([None, {"t": 0.3}, {"t": 0.5}]),
                st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, math.nan])),
            ),
            max_size=12,
        ),
        higher_is_better=st.booleans(),
    )
    def test_best_matches_brute_force(
        self, weights_store: WeightsStore, stats_store: StatsStore, rows: list, higher_is_better: bool
    ) -> None:
        run = "prop-" + uuid.uuid4().hex
        latest: dict[tuple, float] = {}
        for iteration, parameters, value in rows:
            stats_store.store_validation_scores(
                run, iteration, "d", {"c": value}, {"c": higher_is_better}, parameters
            )
            latest[(iteration, str(parameters))] = (iteration, parameters, value, higher_is_better)
        expected = brute_force_best(list(latest.values()))
        if expected is None:
            with pytest.raises(NoScoreError):
                weights_store.retrieve_best(run, "d", "c")
        else:
            assert weights_store.retrieve_best(run, "d", "c") == expected
            assert stats_store.best_validation_score(run, "d", "c").iteration == expected
        assert [score.iteration for score in stats_store.best_validation_scores() if score.run == run] == (
            [] if expected is None else [expected]
        )

    def test_each_criterion_keeps_its_own_direction(
        self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun
    ) -> None:
        for iteration, value in [(1, 0.2), (2, 0.8)]:
            stats_store.store_validation_scores(
                run, iteration, "d", {"up": value, "down": value}, {"up": True, "down": False}
            )
        assert weights_store.retrieve_best(run, "d", "up") == 2
        assert weights_store.retrieve_best(run, "d", "down") == 1

    def test_best_validation_scores_of_every_run_in_one_list(self, stats_store: StatsStore) -> None:
        prefix = "all-best-" + uuid.uuid4().hex[:8]
        first, second, only_nan = prefix + "-a", prefix + "-b", prefix + "-nan"
        for iteration, dice, loss in [(1, 0.5, 0.4), (2, 0.9, 0.1), (3, 0.9, 0.3)]:
            stats_store.store_validation_scores(
                first, iteration, "val", {"dice": dice, "loss": loss}, {"dice": True, "loss": False}
            )
        stats_store.store_validation_scores(second, 4, "test", {"dice": 0.2}, {"dice": True}, {"t": 0.5})
        stats_store.store_validation_scores(second, 4, "test", {"dice": 0.7}, {"dice": True}, {"t": 0.3})
        stats_store.store_validation_scores(only_nan, 1, "val", {"dice": math.nan}, {"dice": True})
        best = [score for score in stats_store.best_validation_scores() if score.run.startswith(prefix)]
        assert [(s.run, s.dataset, s.criterion, s.iteration, s.value, s.higher_is_better) for s in best] == [
            (first, "val", "dice", 2, 0.9, True),  # the tie with iteration 3 goes to the earliest
            (first, "val", "loss", 2, 0.1, False),
            (second, "test", "dice", 4, 0.7, True),
        ]
        assert best[2].parameters == {"t": 0.3}
        assert best == [stats_store.best_validation_score(s.run, s.dataset, s.criterion) for s in best]

    def test_run_totals_sum_up_each_runs_complete_checkpoints(
        self, weights_store: WeightsStore, run: ToyRun
    ) -> None:
        other = ToyRun(run.name + ".other")
        before = time.time()
        weights_store.store_weights(run, 3)
        weights_store.store_weights(run, 7)
        weights_store.put_weights(other, 2, Weights(other.model.state_dict(), None))
        weights_store._reserve(Reservation.new(run.name, 9), replace=False)  # pending: not counted
        totals = {total.run: total for total in weights_store.run_totals()}
        checkpoints = weights_store.list_checkpoints(run)
        assert totals[run.name] == RunTotals(
            run.name, 2, 7, sum(info.size for info in checkpoints), max(info.created for info in checkpoints)
        )
        assert totals[other.name].checkpoints == 1 and totals[other.name].latest_iteration == 2
        assert totals[other.name].bytes == weights_store.checkpoint_info(other, 2).size
        assert totals[run.name].last_stored >= before
        assert [total.run for total in weights_store.run_totals()] == weights_store.list_runs()

    def test_run_totals_of_an_empty_store_are_empty(self, weights_store: WeightsStore) -> None:
        assert weights_store.run_totals() == []

    # ---- stats --------------------------------------------------------------------------------

    def test_training_stats_round_trip_upsert_and_delete_after(self, stats_store: StatsStore, run: ToyRun) -> None:
        stats = [TrainingIterationStats(i, 1.0 / (i + 1), 0.01 * i) for i in range(5)]
        stats_store.store_training_stats(run, stats)
        stats_store.store_training_stats(run.name, [TrainingIterationStats(4, math.nan, 0.5)])
        stored = stats_store.retrieve_training_stats(run)
        assert stored[:4] == stats[:4]
        assert stored[4].iteration == 4 and math.isnan(stored[4].loss)
        assert stats_store.delete_training_stats(run, after=2) == 2
        assert [s.iteration for s in stats_store.retrieve_training_stats(run)] == [0, 1, 2]
        assert stats_store.delete_training_stats(run) == 3
        assert stats_store.retrieve_training_stats(run) == []

    def test_validation_scores_round_trip_replace_and_delete_after(self, stats_store: StatsStore, run: ToyRun) -> None:
        stats_store.store_validation_scores(run, 10, "a", {"f1": 0.1, "x.y": math.inf}, {"f1": True, "x.y": False}, {"t": [1, 2]})
        stats_store.store_validation_scores(run, 10, "a", {"f1": 0.2}, {"f1": True}, {"t": [1, 2]})
        stats_store.store_validation_scores(run, 20, "b", {"f1": math.nan}, {"f1": True})
        scores = stats_store.retrieve_validation_scores(run)
        assert [(s.iteration, s.dataset, s.criterion) for s in scores] == [(10, "a", "f1"), (10, "a", "x.y"), (20, "b", "f1")]
        assert scores[0].value == 0.2 and scores[0].parameters == {"t": [1, 2]}
        assert scores[1].value == math.inf and scores[1].higher_is_better is False
        assert math.isnan(scores[2].value) and scores[2].parameters == {}
        assert [s.criterion for s in stats_store.retrieve_validation_scores(run, dataset="a", criterion="x.y")] == ["x.y"]
        assert stats_store.delete_validation_scores(run, after=10) == 1
        assert {s.iteration for s in stats_store.retrieve_validation_scores(run)} == {10}
        assert stats_store.delete_validation_scores(run) == 2
        assert stats_store.retrieve_validation_scores(run) == []

    def test_runs_are_isolated(self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun) -> None:
        other = ToyRun(run.name + ".other")
        weights_store.store_weights(run, 1)
        stats_store.store_validation_scores(run, 1, "d", {"c": 1.0}, {"c": True})
        assert weights_store.latest_iteration(other) is None
        assert stats_store.retrieve_validation_scores(other) == []
        with pytest.raises(NoScoreError):
            weights_store.retrieve_best(other, "d", "c")
        assert run.name in stats_store.list_runs()

    # ---- bad input ----------------------------------------------------------------------------

    @pytest.mark.parametrize("name, error", BAD_NAMES)
    def test_bad_run_names_are_refused_and_nothing_is_written(
        self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun, name: Any, error: type
    ) -> None:
        calls = [
            lambda: weights_store.put_weights(name, 1, Weights(run.model.state_dict(), None)),
            lambda: weights_store.retrieve_weights(name, 1),
            lambda: weights_store.latest_iteration(name),
            lambda: weights_store.remove(name, 1),
            lambda: weights_store.retrieve_best(name, "d", "c"),
            lambda: stats_store.store_validation_scores(name, 1, "d", {"c": 1.0}, {"c": True}),
            lambda: stats_store.store_training_stats(name, [TrainingIterationStats(1, 0.1, 0.1)]),
            lambda: stats_store.retrieve_validation_scores(name),
        ]
        for call in calls:
            with pytest.raises(error) as caught:
                call()
            assert "run" in str(caught.value)
        assert weights_store.list_runs() == [] and stats_store.list_runs() == []

    @pytest.mark.parametrize("name, error", BAD_NAMES)
    def test_bad_dataset_and_criterion_names_are_refused(
        self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun, name: Any, error: type
    ) -> None:
        with pytest.raises(error, match="dataset"):
            stats_store.store_validation_scores(run, 1, name, {"c": 1.0}, {"c": True})
        with pytest.raises(error, match="dataset"):
            weights_store.retrieve_best(run, name, "c")
        with pytest.raises(error, match="criterion"):
            weights_store.retrieve_best(run, "d", name)
        if isinstance(name, str) or name is None or isinstance(name, int):
            with pytest.raises(error, match="criterion"):
                stats_store.store_validation_scores(run, 1, "d", {name: 1.0}, {name: True})
        assert stats_store.retrieve_validation_scores(run) == []

    @pytest.mark.parametrize("iteration, error", BAD_ITERATIONS)
    def test_bad_iterations_are_refused(
        self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun, iteration: Any, error: type
    ) -> None:
        for call in (
            lambda: weights_store.store_weights(run, iteration),
            lambda: weights_store.retrieve_weights(run, iteration),
            lambda: weights_store.remove(run, iteration),
            lambda: stats_store.store_validation_scores(run, iteration, "d", {"c": 1.0}, {"c": True}),
            lambda: stats_store.delete_validation_scores(run, after=iteration),
        ):
            with pytest.raises(error, match="iteration"):
                call()
        assert weights_store.list_runs() == [] and stats_store.list_runs() == []

    @pytest.mark.parametrize(
        "scores, higher_is_better, parameters, error",
        [
            ({"c": "0.5"}, {"c": True}, None, TypeError),
            ({"c": True}, {"c": True}, None, TypeError),
            ({"c": None}, {"c": True}, None, TypeError),
            ({"c": 0.5}, {}, None, ValueError),
            ({"c": 0.5}, {"c": 1}, None, TypeError),
            ([("c", 0.5)], {"c": True}, None, TypeError),
            ({"c": 0.5}, {"c": True}, {"t": math.nan}, ValueError),
            ({"c": 0.5}, {"c": True}, {"t": object()}, TypeError),
            ({"c": 0.5}, {"c": True}, {1: 0.5}, TypeError),
            ({"c": 0.5}, {"c": True}, [("t", 0.5)], TypeError),
            ({"ok": 0.5, "c": "bad"}, {"ok": True, "c": True}, None, TypeError),
            ({"ok": 0.5, "\udc80": 0.5}, {"ok": True, "\udc80": True}, None, ValueError),
            ({"c": 0.5}, {"c": True}, {"t\ud800": 1}, ValueError),
            ({"c": 0.5}, {"c": True}, {"t": ["ok", "\ud800"]}, ValueError),
            ({"c": 0.5}, {"c": True}, _nested({}, 200), ValueError),
            ({"c": 0.5}, {"c": True}, _self_referencing(), ValueError),
        ],
        ids=lambda value: repr(value)[:30],
    )
    def test_bad_scores_and_parameters_are_refused_and_nothing_is_written(
        self, stats_store: StatsStore, run: ToyRun, scores: Any, higher_is_better: Any, parameters: Any, error: type
    ) -> None:
        with pytest.raises(error) as caught:
            stats_store.store_validation_scores(run, 1, "d", scores, higher_is_better, parameters)
        assert type(caught.value) in (TypeError, ValueError)  # never RecursionError, UnicodeEncodeError
        assert any(field in str(caught.value) for field in ("criterion", "parameters", "higher_is_better", "score"))
        assert stats_store.retrieve_validation_scores(run) == []

    def test_store_weights_needs_a_run_object(self, weights_store: WeightsStore) -> None:
        with pytest.raises(TypeError, match="model"):
            weights_store.store_weights("just-a-name", 1)
        with pytest.raises(TypeError, match="state dict"):
            weights_store.put_weights("r", 1, Weights([1, 2], None))
        assert weights_store.list_runs() == []

    def test_names_that_look_like_operators_are_plain_values(
        self, weights_store: WeightsStore, stats_store: StatsStore, run: ToyRun
    ) -> None:
        for name in ("a.b", "x$y", "{'$gt': ''}", "ünïcødé/..\\"):
            weights_store.put_weights(name, 1, Weights(run.model.state_dict(), None))
            stats_store.store_validation_scores(name, 1, "d.s", {"a.b": 0.5}, {"a.b": True}, {"$k.x": 1})
            assert weights_store.latest_iteration(name) == 1
            assert weights_store.retrieve_best(name, "d.s", "a.b") == 1
            assert stats_store.retrieve_validation_scores(name)[0].parameters == {"$k.x": 1}
        assert weights_store.latest_iteration("a") is None
