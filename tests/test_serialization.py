"""Streaming a state dict into a sink: what the sink receives, and the digest of it."""

from __future__ import annotations

import ast
import io
import re
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
import xxhash

from dacapo_store import serialization
from dacapo_store.payload_memory import private_memory
from dacapo_store.serialization import (
    GATHER_BYTES,
    PAYLOAD_FORMAT_VARIABLE,
    PAYLOAD_FORMATS,
    HashingWriter,
    load_state_from_memory,
    serialize_state,
)


@pytest.mark.parametrize("payload_format", PAYLOAD_FORMATS)
def test_many_small_tensors_reach_the_sink_in_few_large_pieces_and_hash_as_written(monkeypatch, payload_format) -> None:
    monkeypatch.setenv(PAYLOAD_FORMAT_VARIABLE, payload_format)
    state = {f"p{i}": torch.full((10,), float(i)) for i in range(3000)}
    pieces: list[bytes] = []
    info = serialize_state(state, lambda view: pieces.append(bytes(view)), "here")
    payload = b"".join(pieces)
    assert (info.size, info.digest) == (len(payload), "xxh3-128:" + xxhash.xxh3_128(payload).hexdigest())
    assert len(pieces) <= len(payload) // GATHER_BYTES + 2  # not a few per tensor
    memory = private_memory(len(payload))
    memory[:] = payload
    assert torch.equal(load_state_from_memory(memory, None, "here")["p2999"], state["p2999"])


def test_large_writes_reach_the_sink_in_slices_hashed_in_order() -> None:
    received: list[bytes] = []
    writer = HashingWriter(lambda view: received.append(bytes(view)), slice_bytes=1000)
    data = bytes(range(256)) * 10
    assert writer.write(memoryview(data)) == len(data)
    assert [len(piece) for piece in received] == [1000, 1000, 560]
    assert b"".join(received) == data
    assert writer.digest() == "xxh3-128:" + xxhash.xxh3_128(data).hexdigest() and writer.size == len(data)


def test_after_a_sink_error_writes_are_dropped_and_the_error_kept() -> None:
    calls = []

    def failing(view):
        calls.append(len(view))
        raise OSError("disk full")

    writer = HashingWriter(failing)
    with pytest.raises(OSError, match="disk full"):
        writer.write(b"abc")
    assert writer.write(b"more") == 4  # e.g. a buffered writer flushing as it is collected
    assert calls == [3] and isinstance(writer.error, OSError)


def test_torch_payloads_are_plain_torch_save_archives_with_zip_crc32s(monkeypatch) -> None:
    monkeypatch.setenv(PAYLOAD_FORMAT_VARIABLE, "torch")
    state = {"w": torch.arange(1000.0), "n": 3, "nested": {"b": torch.ones(2, dtype=torch.bool)}}
    pieces: list[bytes] = []
    info = serialize_state(state, lambda view: pieces.append(bytes(view)), "here")
    payload = b"".join(pieces)
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        assert archive.testzip() is None  # every record's CRC32 is there and right
        data = next(name for name in archive.namelist() if name.endswith("/data/0"))
        assert archive.getinfo(data).CRC == zlib.crc32(archive.read(data)) != 0
    assert info.digest == "xxh3-128:" + xxhash.xxh3_128(payload).hexdigest()
    loaded = torch.load(io.BytesIO(payload), weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["n"] == 3 and torch.equal(loaded["nested"]["b"], state["nested"]["b"])


PRIVATE_TORCH_TEXT = re.compile(r"torch\._C\b|torch(\.\w+)*\._\w+|serialization\._\w+")


def _dotted_name(node: ast.AST) -> str | None:
    """``a.b.c`` for an attribute chain on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def test_serialization_uses_only_public_torch_apis() -> None:
    source = Path(serialization.__file__).read_text()
    tree = ast.parse(source)
    torch_names = {"torch"}
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            private += [f"{node.module}.{alias.name}" for alias in node.names if alias.name.startswith("_")]
            private += [node.module] if any(part.startswith("_") for part in node.module.split(".")) else []
            torch_names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    private += [alias.name] if any(part.startswith("_") for part in alias.name.split(".")) else []
                    torch_names.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        dotted = _dotted_name(node) if isinstance(node, ast.Attribute) else None
        if dotted is not None and dotted.split(".")[0] in torch_names:
            private += [dotted] if any(part.startswith("_") for part in dotted.split(".")[1:]) else []
        if isinstance(node, ast.Call) and _dotted_name(node.func) in {"getattr", "hasattr", "inspect.signature"}:
            probed = _dotted_name(node.args[0]) if node.args else None
            private += [ast.unparse(node)] if probed and probed.split(".")[0] in torch_names else []  # probing torch
    code = "\n".join(line.split("#")[0] for line in source.splitlines())
    code_without_docs = re.sub(r'"""(.|\n)*?"""', "", code)  # the module doc names what is avoided
    private += [match.group(0) for match in PRIVATE_TORCH_TEXT.finditer(code_without_docs)]
    assert private == []
