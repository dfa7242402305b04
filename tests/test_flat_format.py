"""The flat payload format: what is written flat, that it loads back as ``torch.load`` would
load a ``torch.save`` archive of the same state (values, types, strides, sharing), that a
damaged header is refused as a corrupt checkpoint, and that ``torch.save`` payloads (older
checkpoints, or ``DACAPO_STORE_PAYLOAD_FORMAT=torch``) still load beside flat ones."""

from __future__ import annotations

import collections
import gc
import io
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dacapo_store import CorruptCheckpointError, LocalWeightsStore, MongoWeightsStore, Weights, flat_format
from dacapo_store.payload_memory import private_memory
from dacapo_store.serialization import (
    PAYLOAD_FORMAT_VARIABLE,
    ZIP_MAGIC,
    load_state,
    load_state_from_memory,
    serialize_state,
)
from dacapo_store.testing.mongomock_support import mongomock_client
from dacapo_store.testing.state_values import assert_loaded_equal, flat_header, flat_payload


def payload_of(state: Any) -> bytes:
    pieces: list[bytes] = []
    serialize_state(state, lambda view: pieces.append(bytes(view)), "here")
    return b"".join(pieces)


def load(payload: bytes, map_location: Any = None) -> Any:
    memory = private_memory(len(payload))
    memory[:] = payload
    return load_state_from_memory(memory, map_location, "the test payload")


def torch_round_trip(state: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def tensors_of(value: Any) -> list[torch.Tensor]:
    """The tensors in ``value``, depth first, keys before values."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for key, item in value.items() for t in tensors_of(key) + tensors_of(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_of(item)]
    return []


def sharing(tensors: list[torch.Tensor]) -> list[int]:
    """For each tensor, the index of the first tensor with the same storage (an empty storage
    shares nothing)."""
    firsts: dict[int, int] = {}
    keys = [t.untyped_storage().data_ptr() if t.untyped_storage().nbytes() else -i - 1 for i, t in enumerate(tensors)]
    return [firsts.setdefault(key, i) for i, key in enumerate(keys)]


def assert_loads_as_torch_does(state: Any) -> Any:
    """Store ``state`` flat, load it, and compare it with torch's own round trip."""
    payload = payload_of(state)
    assert payload.startswith(flat_format.MAGIC)
    loaded, expected = load(payload), torch_round_trip(state)
    assert_loaded_equal(loaded, expected)
    loaded_tensors, expected_tensors = tensors_of(loaded), tensors_of(expected)
    assert [t.stride() for t in loaded_tensors] == [t.stride() for t in expected_tensors]
    assert [t.storage_offset() for t in loaded_tensors] == [t.storage_offset() for t in expected_tensors]
    assert sharing(loaded_tensors) == sharing(expected_tensors)
    return loaded


def trained_model_and_adam() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        model(torch.randn(2, 1, 8, 8)).square().mean().backward()
        optimizer.step()
    return model, optimizer


def test_a_model_and_adam_resume_bit_for_bit_from_a_flat_payload() -> None:
    model, optimizer = trained_model_and_adam()
    loaded = assert_loads_as_torch_does({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    assert loaded["model"]._metadata == model.state_dict()._metadata  # read by load_state_dict
    copy, copy_optimizer = trained_model_and_adam()
    for parameter in copy.parameters():
        parameter.data.normal_()
    copy.load_state_dict(loaded["model"])
    copy_optimizer.load_state_dict(loaded["optimizer"])
    batch = torch.randn(2, 1, 8, 8)
    for net, opt in ((model, optimizer), (copy, copy_optimizer)):
        opt.zero_grad()
        net(batch).square().mean().backward()
        opt.step()
    for ours, theirs in zip(copy.state_dict().values(), model.state_dict().values()):
        assert torch.equal(ours, theirs)


FLAT_STATES = [
    pytest.param({"w": torch.arange(6.0).reshape(2, 3).t(), "b": torch.tensor(2.5)}, id="views and 0-d"),
    pytest.param({"tied": (lambda w: {"a": w, "b": w, "row": w[1], "column": w[:, 0]})(torch.ones(3, 2))}, id="tied"),
    pytest.param({0: {"step": torch.tensor(3.0)}, (1, "k"): [None, True, 2**80, -0.0, math.inf, math.nan]}, id="keys, scalars"),
    pytest.param({"s": "ünïcødé ✓ \ud800", "e": torch.empty(0, 4), "n": torch.nn.Parameter(torch.ones(2))}, id="text, empty, parameter"),
    pytest.param({"frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False), "leaf": torch.ones(2, requires_grad=True)}, id="requires_grad"),
    pytest.param(
        {name: torch.zeros(3, dtype=dtype) for name, dtype in flat_format.DTYPES.items() if name != "complex32"},
        id="every dtype",
    ),
    pytest.param(collections.OrderedDict(b=[1, (2, 3.5)], a={}), id="ordered, nested"),
]


@pytest.mark.parametrize("state", FLAT_STATES)
def test_plain_states_are_written_flat_and_load_as_torch_loads_them(state: Any) -> None:
    assert_loads_as_torch_does(state)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_complex32_tensors_load_bit_for_bit() -> None:
    """``torch.equal`` cannot compare complex32 tensors: compare their bytes."""
    tensor = torch.tensor([1 + 2j, -0.5j], dtype=torch.complex64).to(torch.complex32)
    loaded = load(payload_of({"c": tensor}))["c"]
    assert loaded.dtype == torch.complex32 and torch.equal(loaded.view(torch.uint8), tensor.view(torch.uint8))


def test_views_of_one_storage_as_different_types_share_it_again() -> None:
    """``torch.save`` refuses such a state; a flat payload keeps it."""
    weight = torch.ones(3)
    loaded = load(payload_of({"float": weight, "bits": weight.view(torch.int32)}))
    loaded["bits"][0] = 0
    assert loaded["float"].tolist() == [0.0, 1.0, 1.0] and loaded["bits"].dtype == torch.int32


def test_storages_that_start_alike_but_differ_in_size_are_both_kept() -> None:
    whole = torch.arange(8.0).untyped_storage()
    short = torch.empty(0).set_(whole[:8], 0, (2,), (1,))
    long = torch.empty(0).set_(whole[:32], 0, (8,), (1,))
    loaded = load(payload_of({"short": short, "long": long}))
    assert loaded["short"].tolist() == [0.0, 1.0] and loaded["long"].tolist() == [float(i) for i in range(8)]


def test_one_tensor_object_twice_loads_as_one_object() -> None:
    tensor = torch.ones(2)
    loaded = load(payload_of({"a": tensor, "b": [tensor]}))
    assert loaded["a"] is loaded["b"][0]


NOT_FLAT = [
    pytest.param(lambda: {1, 2}, id="set"),
    pytest.param(lambda: 1 + 2j, id="complex"),
    pytest.param(lambda: 3**1000, id="integer of 1,585 bits"),
    pytest.param(lambda: b"x", id="bytes"),
    pytest.param(lambda: torch.Size([2]), id="torch.Size"),
    pytest.param(lambda: torch.float16, id="torch.dtype"),
    pytest.param(lambda: collections.Counter(a=1), id="Counter"),
    pytest.param(lambda: torch.eye(2).to_sparse(), id="sparse"),
    pytest.param(lambda: torch.empty(2, device="meta"), id="meta tensor"),
    pytest.param(lambda: torch.arange(3.0).untyped_storage(), id="storage"),
    pytest.param(lambda: (lambda shared: [shared, shared])([1]), id="shared list"),
    pytest.param(lambda: (lambda t: (setattr(t, "note", 1), t)[1])(torch.ones(1)), id="tensor attribute"),
    pytest.param(lambda: torch.ones(2, dtype=torch.complex64).conj(), id="lazy conjugate"),
    pytest.param(lambda: torch.ones(2, requires_grad=True) * 2, id="non-leaf"),
]


@pytest.mark.parametrize("make", NOT_FLAT)
def test_states_the_flat_format_does_not_describe_are_written_by_torch_save(make: Any) -> None:
    state = {"x": make()}
    with pytest.raises(flat_format.NotFlat):
        flat_format.plan(state)
    payload = payload_of(state)
    assert payload.startswith(ZIP_MAGIC)
    assert_loaded_equal(load(payload), torch_round_trip(state))


def test_the_environment_chooses_torch_save_archives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PAYLOAD_FORMAT_VARIABLE, "torch")
    payload = payload_of({"w": torch.ones(3)})
    assert payload.startswith(ZIP_MAGIC)
    assert torch.equal(torch.load(io.BytesIO(payload), weights_only=True)["w"], torch.ones(3))
    monkeypatch.setenv(PAYLOAD_FORMAT_VARIABLE, "pickle")
    with pytest.raises(ValueError, match="DACAPO_STORE_PAYLOAD_FORMAT is 'pickle': it must be one of flat, torch"):
        payload_of({"w": torch.ones(3)})


@pytest.mark.parametrize("backend", ["local", "mongomock"])
def test_a_store_reads_torch_save_and_flat_checkpoints_side_by_side(backend: str, tmp_path, monkeypatch) -> None:
    store = LocalWeightsStore(tmp_path) if backend == "local" else MongoWeightsStore(mongomock_client())
    model, optimizer = trained_model_and_adam()
    weights = Weights(model.state_dict(), optimizer.state_dict())
    monkeypatch.setenv(PAYLOAD_FORMAT_VARIABLE, "torch")  # as dacapo-store 0.3 wrote them
    store.put_weights("run", 1, weights)
    monkeypatch.delenv(PAYLOAD_FORMAT_VARIABLE)
    store.put_weights("run", 2, weights)
    for iteration in (1, 2):
        loaded = store.retrieve_weights("run", iteration)
        assert_loaded_equal(loaded.model, torch_round_trip(weights.model))
        assert_loaded_equal(loaded.optimizer, torch_round_trip(weights.optimizer))
    monkeypatch.setenv(PAYLOAD_FORMAT_VARIABLE, "fast")
    with pytest.raises(ValueError, match="DACAPO_STORE_PAYLOAD_FORMAT"):
        store.put_weights("run", 3, weights)
    assert [info.iteration for info in store.list_checkpoints("run")] == [1, 2]
    assert store.collect_garbage(older_than=store.stale_after, now=time.time() + store.stale_after + 1, dry_run=True).items == ()


def test_map_location_applies_to_flat_payloads() -> None:
    payload = payload_of({"w": torch.arange(4.0), "nested": [torch.ones(2, 2).t()]})
    meta = load(payload, "meta")
    assert meta["w"].device.type == "meta" and meta["nested"][0].stride() == (1, 2)
    view = load(payload_of({"base": torch.arange(6.0), "view": torch.arange(6.0)[2:5]}), "meta")["view"]
    assert view.storage_offset() == 2 and view.untyped_storage().nbytes() == 24
    places: list[str] = []
    loaded = load(payload, lambda storage, location: places.append(location))
    assert places == ["cpu", "cpu"] and torch.equal(loaded["w"], torch.arange(4.0))
    assert torch.equal(load(payload, {"cpu": "cpu"})["w"], torch.arange(4.0))


def test_loaded_tensors_are_private_to_the_caller() -> None:
    payload = payload_of({"a": torch.zeros(3), "b": torch.zeros(3)})
    first, second = load(payload), load(payload)
    first["a"].add_(1)
    assert torch.equal(first["b"], torch.zeros(3)) and torch.equal(second["a"], torch.zeros(3))


def test_two_storage_objects_over_the_same_memory_load_as_two_as_torch_loads_them() -> None:
    weight = torch.ones(3)
    alias = torch.from_numpy(weight.numpy())
    loaded = assert_loads_as_torch_does({"a": weight, "b": alias})
    loaded["a"].zero_()
    assert loaded["b"].tolist() == [1.0, 1.0, 1.0]


DAMAGED = [
    pytest.param(flat_format.MAGIC + b"\x05", id="cut in the prefix"),
    pytest.param(struct.pack("<8sQ", flat_format.MAGIC, 10**9) + b"{}", id="header longer than the payload"),
    pytest.param(flat_payload(flat_header())[:-3] + b"{{{", id="header not JSON"),
    pytest.param(flat_payload(flat_header(version=2), bytes(16)), id="unknown version"),
    pytest.param(flat_payload(flat_header(storages=[[0, 64, "cpu"]]), bytes(16)), id="storage past the end"),
    pytest.param(flat_payload(flat_header(storages=[[-64, 16, "cpu"]]), bytes(16)), id="negative storage offset"),
    pytest.param(flat_payload(flat_header(tensors=[[0, "float32", [5], [1], 0, False, False]]), bytes(16)), id="tensor past its storage"),
    pytest.param(flat_payload(flat_header(tensors=[[0, "object", [4], [1], 0, False, False]]), bytes(16)), id="unknown dtype"),
    pytest.param(flat_payload(flat_header(tensors=[[-1, "float32", [4], [1], 0, False, False]]), bytes(16)), id="negative storage index"),
    pytest.param(flat_payload(flat_header(root={"t": -1}), bytes(16)), id="negative tensor index"),
    pytest.param(flat_payload(flat_header(root={"t": 3}), bytes(16)), id="missing tensor"),
    pytest.param(flat_payload(flat_header(root={"x": 1}), bytes(16)), id="unknown tag"),
    pytest.param(flat_payload(flat_header(root=[1, 2]), bytes(16)), id="untagged list"),
    pytest.param(flat_payload(flat_header(root={"d": ["w"]}), bytes(16)), id="key without value"),
    pytest.param(flat_payload(flat_header(root={"d": [{"l": []}, 1]}), bytes(16)), id="unhashable key"),
    pytest.param(
        flat_payload(flat_header(storages=[[0, 16, "cpu"], [0, 16, "cpu"]]), bytes(16)), id="overlapping storages"
    ),
    pytest.param(flat_payload(flat_header(storages=[[8, 8, "cpu"]]), bytes(16)), id="unaligned storage"),
    pytest.param(flat_payload(flat_header(tensors=[[0, "float32", [4], [-1], 3, False, False]]), bytes(16)), id="negative stride"),
    pytest.param(flat_payload(flat_header(tensors=[[0, "float32", [4], [1, 1], 0, False, False]]), bytes(16)), id="strides unlike shape"),
    pytest.param(flat_payload(flat_header(root={"l": "abc"}), bytes(16)), id="tag with a string body"),
    pytest.param(flat_payload(flat_header(root={"t": 0, "l": []}), bytes(16)), id="two tags"),
    pytest.param(
        (lambda header: struct.pack("<8sQ", flat_format.MAGIC, len(header)) + header)(
            json.dumps(flat_header(storages=[])).encode("utf-16-le")
        ),
        id="header in UTF-16, which JSON's parser would take and a depth check could misread",
    ),
]


@pytest.mark.parametrize("payload", DAMAGED)
def test_a_damaged_flat_payload_is_refused_as_corrupt(payload: bytes) -> None:
    with pytest.raises(CorruptCheckpointError, match="the test payload: refused to load the payload"):
        load(payload)


def test_a_tensor_past_its_storage_is_refused_even_where_map_location_copies_the_storage() -> None:
    """A copy could be grown by ``set_``; the tensor would then read bytes that were never stored."""
    payload = flat_payload(flat_header(tensors=[[0, "float32", [1000], [1], 0, False, False]]), bytes(16))
    with pytest.raises(CorruptCheckpointError, match="reaching element 999 of a storage of 16 bytes"):
        load(payload, lambda storage, location: storage.clone())


def test_a_deeply_nested_header_is_refused_even_with_a_raised_recursion_limit() -> None:
    """JSON's parser recurses in C: with a high recursion limit it could overflow the stack and
    kill the process, so the header's depth is measured first (in a child process, to be safe)."""
    script = textwrap.dedent("""
        import sys
        from dacapo_store.serialization import load_state_from_memory
        from dacapo_store.testing.state_values import flat_payload
        sys.setrecursionlimit(1_000_000)
        depth = 200_000
        payload = flat_payload({"version": 1, "storages": [], "tensors": [], "root": None})
        header = ('{"version":1,"storages":[],"tensors":[],"root":' + '{"l":[' * depth + '1' + ']}' * depth + '}')
        payload = flat_payload.__globals__["struct"].pack("<8sQ", payload[:8], len(header)) + header.encode()
        payload += bytes(-len(payload) % 64)
        try:
            load_state_from_memory(bytearray(payload), None, "deep")
        except Exception as error:
            print(type(error).__name__, error)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CorruptCheckpointError deep: refused" in done.stdout and "nested deeper than" in done.stdout


def test_the_intact_form_of_the_damaged_payloads_loads() -> None:
    """Control for the damaged payloads above: only the change makes them fail."""
    loaded = load(flat_payload(flat_header(), struct.pack("<4f", 1, 2, 3, 4)))
    assert torch.equal(loaded["w"], torch.tensor([1.0, 2.0, 3.0, 4.0]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests a device this machine lacks")
def test_a_storage_placed_on_a_missing_device_is_not_blamed_on_the_payload() -> None:
    payload = flat_payload(flat_header(storages=[[0, 16, "cuda:0"]]), bytes(16))
    with pytest.raises(RuntimeError) as raised:
        load(payload)
    assert not isinstance(raised.value, CorruptCheckpointError)
    assert torch.equal(load(payload, "cpu")["w"], torch.zeros(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_are_written_flat_and_load_back_onto_their_device() -> None:
    state = {"w": torch.arange(4.0, device="cuda"), "cpu": torch.ones(2)}
    payload = payload_of(state)
    assert payload.startswith(flat_format.MAGIC)
    loaded = load(payload)
    assert loaded["w"].device.type == "cuda" and torch.equal(loaded["w"].cpu(), torch.arange(4.0))
    assert load(payload, "cpu")["w"].device.type == "cpu"


# Property: any nesting of plain containers, scalars and tensors (with views sharing storages)
# loads from a flat payload exactly as from a torch.save archive.
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.uint8, torch.bool]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)
)
keys = st.one_of(st.text(max_size=6), st.integers(-5, 5))


@st.composite
def tensors(draw: Any) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    base = torch.arange(math.prod(shape) * 2 or 1).to(dtype)
    tensor = base[: math.prod(shape)].reshape(shape) if shape else base[0]
    if draw(st.booleans()) and tensor.dim() >= 2:
        tensor = tensor.transpose(0, 1)
    return tensor


@st.composite
def states(draw: Any) -> Any:
    pool = draw(st.lists(tensors(), min_size=1, max_size=4))
    leaves = st.one_of(scalars, st.sampled_from(pool), st.sampled_from(pool).map(lambda t: t.reshape(-1)[1:] if t.numel() > 1 else t))
    tree = st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(keys, children, max_size=3),
            st.dictionaries(keys, children, max_size=3).map(collections.OrderedDict),
        ),
        max_leaves=12,
    )
    return draw(st.dictionaries(keys, tree, min_size=1, max_size=4))


@pytest.mark.slow  # a big property run (150 examples)
@settings(max_examples=150, deadline=None)
@given(states())
def test_any_plain_state_loads_from_a_flat_payload_as_from_torch_save(state: Any) -> None:
    assert_loads_as_torch_does(state)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_another_thread_plans_has_its_garbage_collector_on() -> None:
    """The collector is paused while a header is built; a child forked meanwhile (a DataLoader
    worker) has no thread that would resume it."""
    inside, leave = threading.Event(), threading.Event()

    def pausing() -> None:
        with flat_format._gc_paused():
            inside.set()
            leave.wait()

    thread = threading.Thread(target=pausing)
    thread.start()
    inside.wait()
    try:
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the child: report, then leave at once
            flat_format.plan({"w": torch.ones(2)})
            os.write(write, b"on" if gc.isenabled() else b"off")
            os._exit(0)
        os.close(write)
        answer = os.read(read, 8)
        os.waitpid(child, 0)
    finally:
        leave.set()
        thread.join()
    assert answer == b"on" and gc.isenabled()


@pytest.mark.parametrize("how", ["path", "path, mmap", "open file"])
def test_a_flat_payload_file_loads_from_a_path_mapped_or_not_and_from_an_open_file(tmp_path, how: str) -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3).t(), "step": 3}
    path = tmp_path / "payload"
    path.write_bytes(payload_of(state))
    if how == "open file":
        with open(path, "rb") as file:
            loaded = load_state(file, None, "the file")
    else:
        loaded = load_state(path, None, "the file", mmap=how == "path, mmap")
    assert_loaded_equal(loaded, state)
    loaded["w"].add_(1)  # private (or copy-on-write): the file keeps its bytes
    assert_loaded_equal(load_state(path, None, "the file"), state)
