"""load_weights copies a verified checkpoint into the existing model and optimizer: the result of
both load_state_dicts, and nothing changed at all when anything is wrong."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from bson import ObjectId

from dacapo_store import CorruptCheckpointError, LocalWeightsStore, MongoWeightsStore, Weights
from dacapo_store.load_into import load_into
from dacapo_store.testing.mongomock_support import mongomock_client


@dataclass
class Run:
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer


def _run(seed: int, width: int = 20, stepped: bool = True) -> Run:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(10, width), torch.nn.BatchNorm1d(width), torch.nn.Linear(width, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01 * (seed + 1))
    if stepped:
        model(torch.randn(8, 10)).sum().backward()
        optimizer.step()
    return Run("r", model, optimizer)


def _snapshot(run: Run) -> tuple[dict, dict]:
    """Everything load_weights may change, cloned, with the identity of each tensor."""
    model = {name: (value.clone(), id(value), value.data_ptr()) for name, value in run.model.state_dict(keep_vars=True).items()}
    state = run.optimizer.state_dict()
    optimizer = {
        "state": {key: {name: value.clone() for name, value in entry.items()} for key, entry in state["state"].items()},
        "param_groups": [dict(group) for group in state["param_groups"]],
    }
    return model, optimizer


def _assert_same(run: Run, snapshot: tuple[dict, dict]) -> None:
    model, optimizer = snapshot
    now = run.model.state_dict(keep_vars=True)
    assert now.keys() == model.keys()
    for name, (value, identity, pointer) in model.items():
        assert torch.equal(now[name], value) and id(now[name]) == identity and now[name].data_ptr() == pointer, name
    state = run.optimizer.state_dict()
    assert state["param_groups"] == optimizer["param_groups"]
    assert state["state"].keys() == optimizer["state"].keys()
    for key, entry in optimizer["state"].items():
        for name, value in entry.items():
            assert torch.equal(state["state"][key][name], value), (key, name)


def _assert_loaded_as_load_state_dict(run: Run, weights: Weights, fresh_optimizer: bool = False) -> None:
    expected = _run(1, stepped=not fresh_optimizer)
    expected.model.load_state_dict(weights.model)
    expected.optimizer.load_state_dict(weights.optimizer)
    for (name, value), (_, reference) in zip(run.model.state_dict().items(), expected.model.state_dict().items()):
        assert torch.equal(value, reference) and value.dtype == reference.dtype, name
    got, want = run.optimizer.state_dict(), expected.optimizer.state_dict()
    assert got["param_groups"] == want["param_groups"] and got["state"].keys() == want["state"].keys()
    for key, entry in want["state"].items():
        assert entry.keys() == got["state"][key].keys()
        for name, value in entry.items():
            mine = got["state"][key][name]
            assert torch.equal(mine, value) and (mine.dtype, mine.device) == (value.dtype, value.device), (key, name)


@pytest.fixture(params=["local", "mongomock"])
def store(request, tmp_path):
    return LocalWeightsStore(tmp_path) if request.param == "local" else MongoWeightsStore(mongomock_client())


def _flip_payload_byte(store, location: str) -> None:
    if isinstance(store, LocalWeightsStore):
        path = store.payload_path(location)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        return
    chunks = store.database.collection("weights.chunks")
    chunk = chunks.find_one({"files_id": ObjectId(location), "n": 0})
    data = bytearray(chunk["data"])
    data[len(data) // 2] ^= 0xFF
    chunks.update_one({"_id": chunk["_id"]}, {"$set": {"data": bytes(data)}})


def _stored(store) -> Weights:
    source = _run(0)
    weights = Weights(source.model.state_dict(), source.optimizer.state_dict())
    store.put_weights("r", 1, weights)
    return store.retrieve_weights("r", 1)


def test_loading_into_a_trained_model_equals_load_state_dict_and_keeps_every_tensor(store) -> None:
    weights = _stored(store)
    run = _run(1)
    tensors = {name: (id(value), value.data_ptr()) for name, value in run.model.state_dict(keep_vars=True).items()}
    moments = [id(entry["exp_avg"]) for entry in run.optimizer.state.values()]
    store.load_weights(run, 1)
    _assert_loaded_as_load_state_dict(run, weights)
    assert {name: (id(value), value.data_ptr()) for name, value in run.model.state_dict(keep_vars=True).items()} == tensors
    assert [id(entry["exp_avg"]) for entry in run.optimizer.state.values()] == moments  # copied in place


def test_loading_into_a_fresh_optimizer_equals_load_state_dict(store) -> None:
    weights = _stored(store)
    run = _run(1, stepped=False)
    store.load_weights(run, 1)
    _assert_loaded_as_load_state_dict(run, weights, fresh_optimizer=True)


@pytest.mark.parametrize("stepped", [True, False], ids=["trained", "fresh-optimizer"])
@pytest.mark.parametrize("part", ["model", "optimizer"])
def test_a_corrupt_part_leaves_model_and_optimizer_bit_identical(store, part, stepped) -> None:
    _stored(store)
    _flip_payload_byte(store, store.checkpoint_info("r", 1).parts[part].location)
    run = _run(1, stepped=stepped)
    before = _snapshot(run)
    with pytest.raises(CorruptCheckpointError):
        store.load_weights(run, 1)
    _assert_same(run, before)


def test_a_tensor_of_another_shape_found_late_changes_nothing(store) -> None:
    """The last layer differs: load_state_dict would copy the first layers before it raised."""
    source = _run(0)
    source.model[2] = torch.nn.Linear(20, 4)
    source.optimizer = torch.optim.Adam(source.model.parameters())
    store.put_weights("r", 1, Weights(source.model.state_dict(), source.optimizer.state_dict()))
    run = _run(1)
    before = _snapshot(run)
    with pytest.raises(RuntimeError, match="size mismatch"):
        store.load_weights(run, 1)
    _assert_same(run, before)


def test_an_optimizer_state_that_does_not_fit_changes_nothing(store) -> None:
    source = _run(0)
    store.put_weights("r", 1, Weights(source.model.state_dict(), torch.optim.Adam(list(source.model.parameters())[:2]).state_dict()))
    run = _run(1)
    before = _snapshot(run)
    with pytest.raises(ValueError, match="parameter group"):
        store.load_weights(run, 1)
    _assert_same(run, before)


def test_a_fresh_optimizer_keeps_the_verified_read_without_a_second_copy(store) -> None:
    """It has no tensors to copy into: it is given the tensors of the checked read itself
    (views of the memory read into, which torch did not allocate), not copies of them."""
    weights = _stored(store)
    run = _run(1, stepped=False)
    store.load_weights(run, 1)
    _assert_loaded_as_load_state_dict(run, weights, fresh_optimizer=True)
    tensors = [value for entry in run.optimizer.state.values() for value in entry.values() if isinstance(value, torch.Tensor)]
    assert tensors and not any(value.untyped_storage().resizable() for value in tensors)  # a clone's storage is torch's


def test_load_into_lets_an_optimizer_keep_a_state_of_its_own() -> None:
    run, source = _run(1, stepped=False), _run(0)
    state = source.optimizer.state_dict()
    load_into(run.model, run.optimizer, source.model.state_dict(), state, transient=True, optimizer_transient=False)
    kept = run.optimizer.state[next(iter(run.model.parameters()))]["exp_avg"]
    assert kept is state["state"][0]["exp_avg"]
    copied = _run(1, stepped=False)
    load_into(copied.model, copied.optimizer, source.model.state_dict(), state, transient=True)
    moment = copied.optimizer.state[next(iter(copied.model.parameters()))]["exp_avg"]
    assert torch.equal(moment, kept) and moment.data_ptr() != kept.data_ptr()


def test_a_fresh_optimizers_state_does_not_view_the_payload_file(tmp_path) -> None:
    """The local store maps the payload to copy from it; what the optimizer keeps is its own."""
    store = LocalWeightsStore(tmp_path)
    weights = _stored(store)
    run = _run(1, stepped=False)
    store.load_weights(run, 1)
    path = store.payload_path(store.checkpoint_info("r", 1).parts["optimizer"].location)
    with open(path, "r+b") as file:  # the store never does this; a map would show it
        file.write(b"\0" * path.stat().st_size)
    _assert_loaded_as_load_state_dict(run, weights, fresh_optimizer=True)


def test_load_into_with_hooks_goes_through_load_state_dict() -> None:
    run, source = _run(1), _run(0)
    seen: list[str] = []
    run.model.register_load_state_dict_post_hook(lambda module, keys: seen.append("model"))
    run.optimizer.register_load_state_dict_pre_hook(lambda optimizer, state: seen.append("optimizer"))
    load_into(run.model, run.optimizer, source.model.state_dict(), source.optimizer.state_dict())
    assert sorted(seen) == ["model", "optimizer"]
    assert all(torch.equal(a, b) for a, b in zip(run.model.state_dict().values(), source.model.state_dict().values()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loading_into_a_cuda_model_equals_load_state_dict(tmp_path, monkeypatch) -> None:
    from dacapo_store import staged_copies

    monkeypatch.setattr(staged_copies, "STAGING_BYTES", 4096)  # many turns through the pinned buffers
    store = LocalWeightsStore(tmp_path)
    weights = _stored(store)
    run = _run(1)
    run.model.cuda()
    run.optimizer = torch.optim.Adam(run.model.parameters(), lr=0.02)
    run.model(torch.randn(8, 10, device="cuda")).sum().backward()
    run.optimizer.step()
    store.load_weights(run, 1)
    expected = _run(1)
    expected.model.cuda()
    expected.optimizer = torch.optim.Adam(expected.model.parameters(), lr=0.02)
    expected.model.load_state_dict(weights.model)
    expected.optimizer.load_state_dict(weights.optimizer)
    for a, b in zip(run.model.state_dict().values(), expected.model.state_dict().values()):
        assert torch.equal(a, b) and a.device == b.device
    for key, entry in expected.optimizer.state_dict()["state"].items():
        for name, value in entry.items():
            mine = run.optimizer.state_dict()["state"][key][name]
            assert torch.equal(mine.cpu(), value.cpu()) and mine.device == value.device


def test_a_large_load_copied_by_two_threads_is_exact(monkeypatch) -> None:
    from dacapo_store import helper_threads, staged_copies

    monkeypatch.setattr(helper_threads, "thread_count", lambda: 2)
    monkeypatch.setattr(staged_copies, "PARALLEL_COPY_BYTES", 0)
    monkeypatch.setattr(staged_copies, "COPY_SLICE_BYTES", 1000)
    run, source = _run(1), _run(0)
    load_into(run.model, run.optimizer, source.model.state_dict(), source.optimizer.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(run.model.state_dict().values(), source.model.state_dict().values()))
    for key, entry in source.optimizer.state_dict()["state"].items():
        assert all(torch.equal(run.optimizer.state_dict()["state"][key][name], value) for name, value in entry.items())


def test_a_model_or_optimizer_class_with_its_own_load_state_dict_has_it_called() -> None:
    """An override may rebuild a cache or re-tie weights: the fast copy must not skip it."""
    calls: list[str] = []

    class Model(torch.nn.Sequential):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            calls.append("model")
            return super().load_state_dict(state_dict, strict, assign)

    class Adam(torch.optim.Adam):
        def load_state_dict(self, state_dict):
            calls.append("optimizer")
            return super().load_state_dict(state_dict)

    source = _run(0)
    model = Model(torch.nn.Linear(10, 20), torch.nn.BatchNorm1d(20), torch.nn.Linear(20, 3))
    optimizer = Adam(model.parameters(), lr=0.5)
    model(torch.randn(8, 10)).sum().backward()
    optimizer.step()
    load_into(model, optimizer, source.model.state_dict(), source.optimizer.state_dict())
    assert sorted(calls) == ["model", "optimizer"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.model.state_dict().values()))
    assert optimizer.param_groups[0]["lr"] == source.optimizer.param_groups[0]["lr"]


def test_what_a_module_keeps_on_load_does_not_view_the_payload_file(tmp_path) -> None:
    """A module's extra state is kept as given: it must be the module's own, not the file map."""

    class WithExtra(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.table = {"t": torch.arange(4.0)}

        def get_extra_state(self):
            return self.table

        def set_extra_state(self, state) -> None:
            self.table = state

    store = LocalWeightsStore(tmp_path)
    source = WithExtra()
    store.put_weights("r", 1, Weights(source.state_dict(), torch.optim.SGD(source.parameters(), lr=0.1).state_dict()))
    model = WithExtra()
    model.table = {"t": torch.zeros(4)}
    store.load_weights(Run("r", model, torch.optim.SGD(model.parameters(), lr=0.2)), 1)
    path = store.payload_path(store.checkpoint_info("r", 1).parts["model"].location)
    with open(path, "r+b") as file:  # the store never does this; a map would show it
        file.write(b"\0" * path.stat().st_size)
    assert torch.equal(model.table["t"], torch.arange(4.0))


def test_tied_parameters_get_the_last_keys_values_as_in_load_state_dict(monkeypatch) -> None:
    """Two keys, one tensor: copying both (in slices on two threads) would mix the two entries."""
    from dacapo_store import helper_threads, staged_copies

    monkeypatch.setattr(helper_threads, "thread_count", lambda: 2)
    monkeypatch.setattr(staged_copies, "PARALLEL_COPY_BYTES", 0)
    monkeypatch.setattr(staged_copies, "COPY_SLICE_BYTES", 100)  # 3 slices: slice i of each key on other threads
    # the threads' tasks one after the other, the second first: one order that threads may take
    monkeypatch.setattr(helper_threads, "run_together", lambda tasks: [task() for task in reversed(tasks)])

    def tied() -> torch.nn.Module:
        model = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False))
        model[1].weight = model[0].weight
        return model

    state = {"0.weight": torch.ones(8, 8), "1.weight": torch.full((8, 8), 2.0)}
    expected = tied()
    expected.load_state_dict(state)
    model = tied()
    load_into(model, None, state, None)
    assert torch.equal(model[0].weight, expected[0].weight) and torch.equal(model[1].weight, expected[1].weight)


@pytest.mark.parametrize("target", ["expanded buffer", "inference tensor"])
def test_a_target_the_copy_would_fail_on_changes_nothing(target) -> None:
    """Found before anything is copied: the optimizer is not left loaded while the model is not."""
    source, run = _run(0), _run(1)
    with torch.inference_mode():
        inference = torch.ones(3)
    run.model.register_buffer("extra", torch.ones(1).expand(3) if target == "expanded buffer" else inference)
    state = source.model.state_dict()
    state["extra"] = torch.full((3,), 5.0)
    before = _snapshot(run)
    with pytest.raises(RuntimeError):
        load_into(run.model, run.optimizer, state, source.optimizer.state_dict())
    _assert_same(run, before)


def test_an_interrupt_during_the_copy_puts_the_optimizers_hyperparameters_back(monkeypatch) -> None:
    from dacapo_store import load_into as module

    def interrupted(pairs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "copy_pairs", interrupted)
    source, run = _run(0), _run(1)
    before = _snapshot(run)
    with pytest.raises(KeyboardInterrupt):
        load_into(run.model, run.optimizer, source.model.state_dict(), source.optimizer.state_dict())
    _assert_same(run, before)  # nothing was copied yet here: all of it is as it was


def _two_group_run(seed: int) -> Run:
    """A model whose optimizer has a plain and a fused parameter group (``load_state_dict`` casts
    ``step`` to float32 only in the fused one)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 2))
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[1].parameters()), "fused": True, "lr": 0.5}]
    optimizer = torch.optim.Adam(groups, lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return Run("r", model, optimizer)


def test_each_state_follows_the_policy_of_its_own_parameter_group() -> None:
    """load_state_dict finds each state's group by ``param_id in group["params"]`` (load_into
    answers that from a set): float64 steps stay float64 in the plain group, become float32 in
    the fused one, exactly as torch's own load does."""
    saved = _two_group_run(0)
    state = saved.optimizer.state_dict()
    for entry in state["state"].values():
        entry["step"] = entry["step"].to(torch.float64)
    expected, run = _two_group_run(1), _two_group_run(1)
    params_lists = [group["params"] for group in run.optimizer.param_groups]
    expected.optimizer.load_state_dict(state)
    load_into(run.model, run.optimizer, saved.model.state_dict(), state)
    got, want = run.optimizer.state_dict(), expected.optimizer.state_dict()
    assert got["param_groups"] == want["param_groups"]
    for key, entry in want["state"].items():
        for name, value in entry.items():
            mine = got["state"][key][name]
            assert torch.equal(mine, value) and mine.dtype == value.dtype, (key, name)
    assert [type(group["params"]) for group in run.optimizer.param_groups] == [list, list]
    assert [group["params"] for group in run.optimizer.param_groups] == params_lists
    assert {entry["step"].dtype for entry in got["state"].values()} == {torch.float64, torch.float32}
