"""Payloads in the safetensors layout: every written payload is a valid safetensors file (checked
by the safetensors package), a model's tensors are its entries by their state-dict names, it
loads back as ``torch.load`` would load a ``torch.save`` archive of the same state (values,
types, strides, sharing), what the layout does not describe is written by ``torch.save``, and a
damaged or hostile payload is refused as a corrupt checkpoint."""

from __future__ import annotations

import collections
import gc
import hashlib
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
from unittest import mock

import pytest
import safetensors.torch
import torch
from bson import ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from dacapo_store import CorruptCheckpointError, LocalWeightsStore, MongoWeightsStore, Weights
from dacapo_store import safetensors_layout, state_structure
from dacapo_store.gc_pause import gc_paused
from dacapo_store.payload_memory import private_memory
from dacapo_store.safetensors_layout import payload_layout
from dacapo_store.serialization import (
    PAYLOAD_FORMAT_VARIABLE,
    ZIP_MAGIC,
    load_state,
    load_state_from_memory,
    serialize_state,
)
from dacapo_store.testing.mongomock_support import mongomock_client
from dacapo_store.testing.state_values import (
    assert_loaded_equal,
    safetensors_entries,
    safetensors_payload,
    safetensors_structure,
)


def payload_of(state: Any) -> bytes:
    """The payload of ``state``; one in the safetensors layout is checked by the package."""
    pieces: list[bytes] = []
    serialize_state(state, lambda view: pieces.append(bytes(view)), "here")
    payload = b"".join(pieces)
    if not payload.startswith(ZIP_MAGIC):
        safetensors.torch.load(payload)  # raises for anything but a valid safetensors file
    return payload


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
    """Store ``state`` in the safetensors layout, load it, and compare it with torch's own round trip."""
    payload = payload_of(state)
    assert safetensors_layout.is_safetensors(payload[:16])
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


def test_a_model_and_adam_resume_bit_for_bit_from_a_safetensors_payload() -> None:
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
        {name: torch.zeros(3, dtype=dtype) for name, dtype in state_structure.DTYPES.items() if name != "complex32"},
        id="every dtype",
    ),
    pytest.param(collections.OrderedDict(b=[1, (2, 3.5)], a={}), id="ordered, nested"),
]


@pytest.mark.parametrize("state", FLAT_STATES)
def test_plain_states_are_written_as_safetensors_and_load_as_torch_loads_them(state: Any) -> None:
    assert_loads_as_torch_does(state)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_complex32_tensors_load_bit_for_bit() -> None:
    """``torch.equal`` cannot compare complex32 tensors: compare their bytes."""
    tensor = torch.tensor([1 + 2j, -0.5j], dtype=torch.complex64).to(torch.complex32)
    loaded = load(payload_of({"c": tensor}))["c"]
    assert loaded.dtype == torch.complex32 and torch.equal(loaded.view(torch.uint8), tensor.view(torch.uint8))


def test_views_of_one_storage_as_different_types_share_it_again() -> None:
    """``torch.save`` refuses such a state; the safetensors layout keeps it."""
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
def test_states_the_layout_does_not_describe_are_written_by_torch_save(make: Any) -> None:
    state = {"x": make()}
    with pytest.raises(state_structure.Undescribable):
        safetensors_layout.plan(state)
    payload = payload_of(state)
    assert payload.startswith(ZIP_MAGIC)
    assert_loaded_equal(load(payload), torch_round_trip(state))


def test_the_environment_chooses_torch_save_archives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PAYLOAD_FORMAT_VARIABLE, "torch")
    payload = payload_of({"w": torch.ones(3)})
    assert payload.startswith(ZIP_MAGIC)
    assert torch.equal(torch.load(io.BytesIO(payload), weights_only=True)["w"], torch.ones(3))
    monkeypatch.setenv(PAYLOAD_FORMAT_VARIABLE, "pickle")
    with pytest.raises(ValueError, match="DACAPO_STORE_PAYLOAD_FORMAT is 'pickle': it must be one of safetensors, torch"):
        payload_of({"w": torch.ones(3)})


@pytest.mark.parametrize("chosen", ["safetensors", "flat", ""])
def test_the_default_and_0_5_0s_flat_choice_write_the_safetensors_layout(monkeypatch: pytest.MonkeyPatch, chosen: str) -> None:
    monkeypatch.setenv(PAYLOAD_FORMAT_VARIABLE, chosen)
    assert torch.equal(safetensors.torch.load(payload_of({"w": torch.ones(3)}))["w"], torch.ones(3))


@pytest.mark.parametrize("backend", ["local", "mongomock"])
def test_a_store_reads_torch_save_and_safetensors_checkpoints_side_by_side(backend: str, tmp_path, monkeypatch) -> None:
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


def test_map_location_applies_to_safetensors_payloads() -> None:
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


S, E, T, D = safetensors_payload, safetensors_entries, safetensors_structure, bytes(16)


def _with_structure(structure: Any) -> dict[str, Any]:
    return {"__metadata__": {"format": "pt", "dacapo_store": structure}, **E()}


def _tensor(**changes: Any) -> list[Any]:
    record = dict(zip(["storage", "dtype", "shape", "stride", "offset", "grad", "param"], [0, "float32", [4], [1], 0, False, False]))
    return [[*{**record, **changes}.values()]]


DAMAGED = [
    pytest.param(b"\x05\x00", id="cut in the header length"),
    pytest.param(struct.pack("<Q", 10**6) + b"{}", id="header longer than the payload"),
    pytest.param(struct.pack("<Q", 10**9) + b"{}" + bytes(64), id="header longer than the cap"),
    pytest.param(struct.pack("<Q", 3) + b"{{{", id="header not JSON"),
    pytest.param(struct.pack("<Q", 6) + '{"ü":1'.encode()[:6], id="header not ASCII"),
    pytest.param(
        (lambda header: struct.pack("<Q", len(header)) + header + D)(json.dumps(E()).encode("utf-16-le")),
        id="header in UTF-16, which JSON's parser would take and a depth check could misread",
    ),
    pytest.param(S({"__metadata__": {"a": 1}, **E()}, D), id="metadata not strings"),
    pytest.param(S(_with_structure("{{"), D), id="structure not JSON"),
    pytest.param(S(E(), D, T(version=2)), id="unknown structure version"),
    pytest.param(S(E(data_offsets=[0, 32], shape=[8]), D), id="entry past the end"),
    pytest.param(S(E(data_offsets=[4, 20]), bytes(20)), id="entry not starting at the data start"),
    pytest.param(S(E(), bytes(20)), id="bytes after the last entry"),
    pytest.param(S({**E(), "v": {"dtype": "F32", "shape": [4], "data_offsets": [20, 36]}}, bytes(36)), id="gap between entries"),
    pytest.param(S({**E(), "v": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, bytes(24)), id="overlapping entries"),
    pytest.param(S(E(data_offsets=[-16, 0]), D), id="negative offsets"),
    pytest.param(S(E(data_offsets=[0, 12]), bytes(12)), id="entry size unlike dtype x shape"),
    pytest.param(S(E(dtype="F128"), D), id="unknown safetensors dtype"),
    pytest.param(S(E(shape=[-4]), D), id="negative shape"),
    pytest.param(S(E(shape=[4.0]), D), id="float shape"),
    pytest.param(S(E(extra=1), D), id="unknown entry key"),
    pytest.param(S(E(data_offsets=[0]), D), id="one data offset"),
    pytest.param(S(E(), D, T(storages=[["v", "cpu"]])), id="storage of a missing entry"),
    pytest.param(S(E(), D, T(storages=[["w", "cpu"], ["w", "cpu"]])), id="two storages on one entry"),
    pytest.param(S(E(), D, T(tensors=_tensor(shape=[5]))), id="tensor past its storage"),
    pytest.param(S(E(), D, T(tensors=_tensor(offset=1))), id="tensor shifted past its storage"),
    pytest.param(S(E(), D, T(tensors=_tensor(dtype="object"))), id="unknown torch dtype"),
    pytest.param(S(E(), D, T(tensors=_tensor(storage=-1))), id="negative storage index"),
    pytest.param(S(E(), D, T(tensors=_tensor(storage=1))), id="missing storage"),
    pytest.param(S(E(), D, T(root={"t": -1})), id="negative tensor index"),
    pytest.param(S(E(), D, T(root={"t": 3})), id="missing tensor"),
    pytest.param(S(E(), D, T(root={"x": 1})), id="unknown tag"),
    pytest.param(S(E(), D, T(root=[1, 2])), id="untagged list"),
    pytest.param(S(E(), D, T(root={"d": ["w"]})), id="key without value"),
    pytest.param(S(E(), D, T(root={"d": [{"l": []}, 1]})), id="unhashable key"),
    pytest.param(S(E(), D, T(tensors=_tensor(stride=[-1], offset=3))), id="negative stride"),
    pytest.param(S(E(), D, T(tensors=_tensor(stride=[1, 1]))), id="strides unlike shape"),
    pytest.param(S(E(), D, T(tensors=_tensor(shape=[4.5]))), id="float size"),
    pytest.param(S(E(), D, T(root={"l": "abc"})), id="tag with a string body"),
    pytest.param(S(E(), D, T(root={"t": 0, "l": []})), id="two tags"),
    pytest.param(S(E(), D, T(root={"l": json.loads("[" * 300 + "]" * 300)})), id="structure nested too deep"),
    pytest.param(S({"w": {"dtype": "F32", "shape": json.loads("[" * 10 + "]" * 10), "data_offsets": [0, 0]}}), id="header nested too deep"),
]


@pytest.mark.parametrize("payload", DAMAGED)
def test_a_damaged_safetensors_payload_is_refused_as_corrupt(payload: bytes) -> None:
    with pytest.raises(CorruptCheckpointError, match="the test payload: refused to load the payload"):
        load(payload)


def test_the_intact_form_of_the_damaged_payloads_loads() -> None:
    """Control for the damaged payloads above: only the change makes them fail."""
    data = struct.pack("<4f", 1, 2, 3, 4)
    for payload in (S(E(), data, T()), S(E(), data)):  # with and without dacapo-store's structure
        assert torch.equal(load(payload)["w"], torch.tensor([1.0, 2.0, 3.0, 4.0]))
        assert torch.equal(safetensors.torch.load(payload)["w"], torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_a_tensor_past_its_storage_is_refused_even_where_map_location_copies_the_storage() -> None:
    """A copy could be grown by ``set_``; the tensor would then read bytes that were never stored."""
    payload = S(E(), D, T(tensors=_tensor(shape=[1000])))
    with pytest.raises(CorruptCheckpointError, match="reaching element 999 of a storage of 16 bytes"):
        load(payload, lambda storage, location: storage.clone())


HOSTILE_HEADERS = {
    "nested header": ('{"a":' + "[" * 40_000 + "]" * 40_000 + "}", "JSON nested deeper than 3"),
    "nested structure": (
        json.dumps({"__metadata__": {"dacapo_store": '{"root":' + '{"l":[' * 8_000 + "]}" * 8_000 + "}"}}),
        "JSON nested deeper than 208",
    ),
    "escaped quotes, never closed": ('{"a' + '\\"' * 40_000, "Unterminated string"),
}


@pytest.mark.parametrize(("header", "reason"), HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS.keys())
def test_an_80_kb_hostile_header_is_refused_with_a_raised_recursion_limit(header: str, reason: str) -> None:
    """JSON's parser recurses in C: with a high recursion limit it could overflow the stack and
    kill the process, and a depth check scanning strings badly takes quadratic time. The header
    must be refused, and the call return (in a child process, so a crash or hang fails)."""
    script = textwrap.dedent("""
        import struct, sys
        from dacapo_store.serialization import load_state_from_memory
        sys.setrecursionlimit(10**6)
        header = sys.stdin.read().encode()
        header += b" " * (-(8 + len(header)) % 64)
        try:
            load_state_from_memory(bytearray(struct.pack("<Q", len(header)) + header), None, "deep")
        except Exception as error:
            print(type(error).__name__, error)
    """)
    assert len(header) >= 80_000
    done = subprocess.run([sys.executable, "-c", script], input=header, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CorruptCheckpointError deep: refused" in done.stdout and reason in done.stdout


def scanned_depth(text: bytes) -> int:
    """The nesting ``check_json_depth`` finds in ``text``, read byte by byte: brackets count
    outside strings, and a quote after an odd run of backslashes neither ends nor starts one
    (outside strings a backslash is a syntax error, where ``json.loads`` stops reading)."""
    inside, backslashes, depth, deepest = False, 0, 0, 0
    for byte in text:
        if byte == ord('"') and backslashes % 2 == 0:
            inside = not inside
        elif not inside and byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif not inside and byte in b"]}":
            depth -= 1
        backslashes = backslashes + 1 if byte == ord("\\") else 0
    return deepest


def assert_json_depth(text: bytes, depth: int, scan_bytes: int = state_structure._SCAN_BYTES) -> None:
    """``check_json_depth`` scanning ``scan_bytes`` at a time accepts ``text`` nested ``depth``
    deep, and refuses it one level less."""
    with mock.patch.object(state_structure, "_SCAN_BYTES", scan_bytes):
        state_structure.check_json_depth(text, depth)
        if depth > 0:
            with pytest.raises(ValueError, match=f"JSON nested deeper than {depth - 1}$"):
                state_structure.check_json_depth(text, depth - 1)


# Scanned a few bytes at a time, strings, escapes and runs of backslashes cross the chunks.
scan_sizes = st.sampled_from([1, 2, 3, 5, 8, state_structure._SCAN_BYTES])
json_ish = st.lists(st.sampled_from([bytes([byte]) for byte in b'[]{}"\\ a,:']), max_size=200).map(b"".join)
json_text = st.text(alphabet='[]{}"\\ a,:\n\u00e9', max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | json_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4),
    max_leaves=30,
)


def nesting(value: Any) -> int:
    if isinstance(value, dict):
        value = list(value.values())
    return 1 + max(map(nesting, value), default=0) if isinstance(value, list) else 0


@settings(max_examples=500, deadline=None)
@given(json_ish, scan_sizes)
def test_the_json_depth_check_reads_any_text_as_the_byte_by_byte_scan(text: bytes, scan_bytes: int) -> None:
    assert_json_depth(text, scanned_depth(text), scan_bytes)


@settings(max_examples=200, deadline=None)
@given(json_values, scan_sizes)
def test_the_json_depth_check_finds_the_nesting_of_json_values(value: Any, scan_bytes: int) -> None:
    """Also of a value beside its JSON text in a string, as a header holds the structure."""
    for text, depth in ((json.dumps(value), nesting(value)), (json.dumps([json.dumps(value), value]), 1 + nesting(value))):
        assert scanned_depth(text.encode("ascii")) == depth
        assert_json_depth(text.encode("ascii"), depth, scan_bytes)


SCAN = state_structure._SCAN_BYTES
HOSTILE_JSON = {
    "200,000 [": (b"[" * 200_000, 200_000),
    "200,000 [ in a string never closed": (b'"' + b"[" * 200_000, 0),
    "a run of 200,001 backslashes escaping the quote": (b'["' + b"\\" * 200_001 + b'"[[', 1),
    "a run of 200,000 backslashes before the quote": (b'["' + b"\\" * 200_000 + b'"[[', 3),
    "100,000 escaped quotes, never closed": (b'{"a' + b'\\"' * 100_000 + b"[[", 1),
    "an odd run of backslashes ending a scanned chunk": (b'[ "' + b"\\" * (SCAN - 3) + b'"[[', 1),
    "an even run of backslashes ending a scanned chunk": (b'["' + b"\\" * (SCAN - 2) + b'"[[', 3),
    "a string crossing a scanned chunk": (b"[" + b'"' + b"[" * SCAN + b'"[', 2),
}


@pytest.mark.parametrize(("text", "depth"), HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_the_json_depth_check_reads_hostile_texts_as_the_byte_by_byte_scan(text: bytes, depth: int) -> None:
    assert scanned_depth(text) == depth
    assert_json_depth(text, depth)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests a device this machine lacks")
def test_a_storage_placed_on_a_missing_device_is_not_blamed_on_the_payload() -> None:
    payload = S(E(), D, T(storages=[["w", "cuda:0"]]))
    with pytest.raises(RuntimeError) as raised:
        load(payload)
    assert not isinstance(raised.value, CorruptCheckpointError)
    assert torch.equal(load(payload, "cpu")["w"], torch.zeros(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_are_written_as_safetensors_and_load_back_onto_their_device() -> None:
    state = {"w": torch.arange(4.0, device="cuda"), "cpu": torch.ones(2)}
    payload = payload_of(state)
    assert safetensors_layout.is_safetensors(payload[:16])
    loaded = load(payload)
    assert loaded["w"].device.type == "cuda" and torch.equal(loaded["w"].cpu(), torch.arange(4.0))
    assert load(payload, "cpu")["w"].device.type == "cpu"


# Property: any nesting of plain containers, scalars and tensors (with views sharing storages)
# loads from a safetensors payload exactly as from a torch.save archive.
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


@settings(max_examples=150, deadline=None)
@given(states())
def test_any_plain_state_loads_from_a_safetensors_payload_as_from_torch_save(state: Any) -> None:
    assert_loads_as_torch_does(state)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_another_thread_plans_has_its_garbage_collector_on() -> None:
    """The collector is paused while a header is built; a child forked meanwhile (a DataLoader
    worker) has no thread that would resume it."""
    inside, leave = threading.Event(), threading.Event()

    def pausing() -> None:
        with gc_paused():
            inside.set()
            leave.wait()

    thread = threading.Thread(target=pausing)
    thread.start()
    inside.wait()
    try:
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the child: report, then leave at once
            safetensors_layout.plan({"w": torch.ones(2)})
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
def test_a_safetensors_payload_file_loads_from_a_path_mapped_or_not_and_from_an_open_file(tmp_path, how: str) -> None:
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


def test_a_stored_models_local_payload_is_its_state_dict_for_safetensors_load_file(tmp_path) -> None:
    model, optimizer = trained_model_and_adam()
    store = LocalWeightsStore(tmp_path)
    info = store.put_weights("run", 1, Weights(model.state_dict(), optimizer.state_dict()))
    read = safetensors.torch.load_file(store.payload_path(info.parts["model"].location))
    expected = model.state_dict()
    assert sorted(read) == sorted(expected)
    for name, tensor in expected.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor)
    optimizer_read = safetensors.torch.load_file(store.payload_path(info.parts["optimizer"].location))
    for index, state in optimizer.state_dict()["state"].items():
        for key, tensor in state.items():
            assert torch.equal(optimizer_read[f"state.{index}.{key}"], tensor)


def test_a_gridfs_payload_downloaded_is_the_state_dict_for_safetensors_load() -> None:
    model, _ = trained_model_and_adam()
    store = MongoWeightsStore(mongomock_client())
    info = store.put_weights("run", 1, Weights(model.state_dict(), None))
    read = safetensors.torch.load(store.bucket.open_download_stream(ObjectId(info.parts["model"].location)).read())
    assert sorted(read) == sorted(model.state_dict())
    assert all(torch.equal(read[name], tensor) for name, tensor in model.state_dict().items())


def entries_of(payload: bytes) -> dict[str, Any]:
    (size,) = struct.unpack_from("<Q", payload)
    header = json.loads(payload[8 : 8 + size])
    header.pop("__metadata__")
    return header


def test_storages_no_tensor_covers_whole_are_stored_once_under_reserved_names() -> None:
    base = torch.arange(12.0)
    state = {"w": base.view(3, 4), "tied": base.view(3, 4), "t": base.view(3, 4).t(), "row": base[4:8], "__x": torch.ones(2)}
    payload = payload_of(state)
    assert sorted(entries_of(payload)) == ["__storage__.1", "w"]  # base under its first name, "__x" reserved
    assert sorted(safetensors.torch.load(payload)) == ["__storage__.1", "w"]
    assert_loads_as_torch_does(state)


def test_names_that_collide_fall_back_to_reserved_names_and_load_exactly() -> None:
    state = {"a.b": torch.ones(2), "a": {"b": torch.zeros(2)}, 0: torch.full((2,), 3.0), "0": torch.full((2,), 4.0)}
    payload = payload_of(state)
    entries = entries_of(payload)
    assert sorted(entries) == ["0", "__storage__.1", "__storage__.3", "a.b"]
    read = safetensors.torch.load(payload)
    assert torch.equal(read["a.b"], torch.ones(2)) and torch.equal(read["0"], torch.full((2,), 3.0))
    assert_loads_as_torch_does(state)


def test_entries_are_packed_with_each_aligned_to_its_element_size_and_the_data_to_64_bytes() -> None:
    state = {"flag": torch.ones(3, dtype=torch.bool), "half": torch.ones(3, dtype=torch.float16), "big": torch.ones(3, dtype=torch.float64)}
    payload = payload_of(state)
    (size,) = struct.unpack_from("<Q", payload)
    assert (8 + size) % 64 == 0
    for entry in entries_of(payload).values():
        itemsize = safetensors_layout._SAFETENSORS_DTYPES[entry["dtype"]].itemsize
        assert entry["data_offsets"][0] % itemsize == 0


def test_payload_layout_says_where_each_tensor_lies_by_its_path() -> None:
    model, optimizer = trained_model_and_adam()
    state = optimizer.state_dict()
    payload = payload_of(state)
    layout = payload_layout(payload)
    paths = layout.paths()
    for index, (path, record) in enumerate(zip(paths, layout.tensors)):
        expected = state[path[0]][path[1]][path[2]]
        assert (record.dtype, record.shape, record.stride) == (expected.dtype, list(expected.shape), list(expected.stride()))
        begin, end = layout.byte_range(index)
        assert payload[begin:end] == expected.numpy().tobytes()
    assert ("state", 0, "exp_avg") in paths


def test_the_safetensors_dtype_names_are_the_packages() -> None:
    for dtype, name in safetensors_layout.SAFETENSORS_DTYPE.items():
        payload = safetensors.torch.save({"x": torch.zeros(2, dtype=dtype)}, metadata={"format": "pt"})
        assert entries_of(payload)["x"]["dtype"] == name


def fixed_state() -> dict[Any, Any]:
    """A state of most things the layout writes: names that collide, are reserved or need
    escaping, tied weights and views, several element types, ``_metadata``, non-string keys."""
    weight = torch.arange(12.0).reshape(3, 4)
    model = collections.OrderedDict([("0.weight", weight), ("0.bias", torch.arange(3.0, dtype=torch.float16))])
    model._metadata = collections.OrderedDict([("", {"version": 1})])  # type: ignore[attr-defined]
    return {
        "model": model,
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.full((3, 4), 0.5), "exp_avg_sq": torch.ones(3, 4).t()}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
        },
        "views": {"tied": weight, "row": weight[1], "column": weight[:, 0]},
        'q"\\\u00fc\u2028': torch.arange(5), "__reserved": torch.ones(2, dtype=torch.bfloat16), "views.tied": torch.ones(1),
        "bytes": torch.arange(3, dtype=torch.int8).view(torch.uint8)[1:], (1, "k"): [None, True, -0.0, math.nan, 2**70],
        "empty": torch.empty(0, 2, dtype=torch.float64), "flags": torch.tensor([True, False]),
    }


def test_the_payload_of_a_fixed_state_is_the_same_byte_for_byte() -> None:
    """The format is fixed (docs/format.md): the header and data written for a fixed state stay
    the same, whatever the way of writing them (digests of dacapo-store 0.6's payload)."""
    planned = safetensors_layout.plan(fixed_state())
    pieces: list[bytes] = []
    planned.write(lambda piece: pieces.append(bytes(piece)))
    payload = b"".join(pieces)
    assert payload == payload_of(fixed_state())
    assert hashlib.sha256(planned.header).hexdigest() == "7e25cc5f02401bc5c0c90757d87caa724edc98177366f7c26b2f34e78ea7e24d"
    assert hashlib.sha256(payload).hexdigest() == "82e65be1249273b4f1091ef9a3ba4cf1d147c795a406d15c36724176f34e64f3"


def test_storages_small_and_large_are_written_whole_and_in_order() -> None:
    """Small storages are gathered into pieces of up to ``_GATHER_BYTES``, larger ones written as
    they are: every size around the piece size lands where the header says."""
    gather = safetensors_layout._GATHER_BYTES
    sizes = [1000, gather - 500, 2000, gather + 8, 12, gather, 4, gather - 1, 1, 0, 3]
    state = {f"s{i}": torch.randint(0, 256, (size,), dtype=torch.uint8, generator=torch.Generator().manual_seed(i)) for i, size in enumerate(sizes)}
    pieces: list[bytes] = []
    safetensors_layout.plan(state).write(lambda piece: pieces.append(bytes(piece)))
    assert max(len(piece) for piece in pieces) == gather + 8
    read = safetensors.torch.load(b"".join(pieces))
    assert read.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(read[name], tensor)
