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

from dacapo_store import _torch_internals, serialization
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


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _torch_private_attributes() -> frozenset[str]:
    """The private attribute names of torch's classes that state dicts are made of (tensors,
    parameters, storages, modules, optimizers): their class attributes and those their
    instances set in ``__init__``."""
    parameter = torch.nn.Parameter(torch.ones(1))
    typed = _torch_internals.typed_storage(torch.UntypedStorage(0), torch.uint8)
    objects = (torch.Tensor, parameter, torch.UntypedStorage, typed, torch.nn.Module(), torch.optim.SGD([parameter], lr=0.1))
    return frozenset(name for value in objects for name in dir(value) if _is_private(name))


def _private_torch_uses(tree: ast.AST, private_attributes: frozenset[str]) -> tuple[list[str], set[str]]:
    """The private torch APIs ``tree`` uses, and the names it binds to torch modules and objects.

    A use is (dunders such as ``__reduce_ex__`` are public): importing a torch module or name
    that has a ``_`` part (``from torch.nn.modules.batchnorm import _NormBase``); an attribute
    chain with a ``_`` part on a name bound to torch (``torch._utils``,
    ``torch.Tensor._reduce_ex_internal``); a ``_`` keyword to such a chain (``_internal=True``);
    and reading, on anything but ``self`` or ``cls``, an attribute that is one of
    ``private_attributes`` (``storage._cdata``, ``type(module)._load_from_state_dict``), or
    naming one to ``getattr``, ``hasattr`` or ``setattr``.
    """
    torch_names = {"torch"}
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            private += [f"{node.module}.{alias.name}" for alias in node.names if _is_private(alias.name)]
            private += [node.module] if any(_is_private(part) for part in node.module.split(".")) else []
            torch_names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    private += [alias.name] if any(_is_private(part) for part in alias.name.split(".")) else []
                    torch_names.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted_name(node)
            if dotted is not None and dotted.split(".")[0] in torch_names:
                private += [dotted] if any(_is_private(part) for part in dotted.split(".")[1:]) else []
            elif node.attr in private_attributes and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}):
                private.append(ast.unparse(node))
        elif isinstance(node, ast.Call):
            callee = _dotted_name(node.func)
            if callee is not None and callee.split(".")[0] in torch_names:
                keywords = [keyword.arg for keyword in node.keywords if keyword.arg]
                private += [f"{callee}({keyword}=...)" for keyword in keywords if _is_private(keyword)]
            if callee in {"getattr", "hasattr", "setattr"} and len(node.args) > 1:
                name = node.args[1]
                if isinstance(name, ast.Constant) and name.value in private_attributes:
                    private.append(ast.unparse(node))
    return private, torch_names


def test_serialization_uses_only_public_torch_apis() -> None:
    source = Path(serialization.__file__).read_text()
    tree = ast.parse(source)
    private, torch_names = _private_torch_uses(tree, _torch_private_attributes())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _dotted_name(node.func) in {"getattr", "hasattr", "inspect.signature"}:
            probed = _dotted_name(node.args[0]) if node.args else None
            private += [ast.unparse(node)] if probed and probed.split(".")[0] in torch_names else []  # probing torch
    code = "\n".join(line.split("#")[0] for line in source.splitlines())
    code_without_docs = re.sub(r'"""(.|\n)*?"""', "", code)  # the module doc names what is avoided
    private += [match.group(0) for match in PRIVATE_TORCH_TEXT.finditer(code_without_docs)]
    assert private == []


PRIVATE_TORCH_ALLOWED = {"_torch_internals.py", "testing/state_values.py"}
"""The modules that may use private torch APIs: :mod:`dacapo_store._torch_internals`, and the
test catalogue, which makes the exotic values (lazy negations, sparse tensors) it lists."""


def test_private_torch_apis_are_used_only_in_torch_internals() -> None:
    package = Path(serialization.__file__).parent
    private_attributes = _torch_private_attributes()
    assert {"_cdata", "_untyped_storage", "_backward_hooks", "_load_from_state_dict"} <= private_attributes
    uses = {}
    for path in sorted(package.rglob("*.py")):
        module = path.relative_to(package).as_posix()
        found, _ = _private_torch_uses(ast.parse(path.read_text()), private_attributes)
        if found and module not in PRIVATE_TORCH_ALLOWED:
            uses[module] = found
    assert uses == {}
