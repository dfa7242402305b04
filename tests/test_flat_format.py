"""The legacy flat v1 payload (written by dacapo-store 0.4 and 0.5, no longer written) stays
readable: real 0.5.0 payloads load as torch loads the same state, and a damaged or hostile
header is refused as a corrupt checkpoint."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from dacapo_store import CorruptCheckpointError, flat_format
from dacapo_store.payload_memory import private_memory
from dacapo_store.serialization import load_state, load_state_from_memory
from dacapo_store.testing.state_values import assert_loaded_equal, flat_header, flat_payload

FIXTURES = Path(__file__).parent / "fixtures" / "stores_0_5_0"
FLAT_PAYLOADS = sorted(
    path for path in (FIXTURES / "flat" / "local" / "payloads").iterdir() if path.read_bytes().startswith(flat_format.MAGIC)
)


def load(payload: bytes, map_location: Any = None) -> Any:
    memory = private_memory(len(payload))
    memory[:] = payload
    return load_state_from_memory(memory, map_location, "the test payload")


@pytest.mark.parametrize("how", ["path", "path, mmap", "open file", "memory"])
def test_0_5_0_flat_payloads_load_as_torch_loads_them(how: str) -> None:
    assert len(FLAT_PAYLOADS) == 4  # adam/1 (model, optimizer), tied/2 (model), odd/3 (optimizer)
    expected = torch.load(FIXTURES / "expected.pt", weights_only=True)
    candidates = [state[part] for state in expected.values() for part in ("model", "optimizer") if state[part] is not None]
    for path in FLAT_PAYLOADS:
        if how == "open file":
            with open(path, "rb") as file:
                loaded = load_state(file, None, "the file")
        elif how == "memory":
            loaded = load(path.read_bytes())
        else:
            loaded = load_state(path, None, "the file", mmap=how == "path, mmap")
        matches = []
        for candidate in candidates:
            try:
                assert_loaded_equal(loaded, candidate)
                matches.append(candidate)
            except AssertionError:
                pass
        assert len(matches) == 1, path.name


def test_map_location_applies_to_0_5_0_flat_payloads() -> None:
    for path in FLAT_PAYLOADS:
        payload = path.read_bytes()
        meta, cpu = tensors_of(load(payload, "meta")), tensors_of(load(payload, "cpu"))
        assert [t.device.type for t in meta] == ["meta"] * len(cpu)
        assert [(t.shape, t.stride(), t.dtype) for t in meta] == [(t.shape, t.stride(), t.dtype) for t in cpu]


def tensors_of(value: Any) -> list[torch.Tensor]:
    """The tensors in ``value``, depth first."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_of(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_of(item)]
    return []


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
        import struct, sys
        from dacapo_store.flat_format import MAGIC
        from dacapo_store.serialization import load_state_from_memory
        sys.setrecursionlimit(1_000_000)
        depth = 40_000
        header = '{"version":1,"storages":[],"tensors":[],"root":' + '{"l":[' * depth + '1' + ']}' * depth + '}'
        payload = struct.pack("<8sQ", MAGIC, len(header)) + header.encode()
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
