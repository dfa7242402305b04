"""Payloads in the safetensors layout: written as a stream, read back checked.

A payload is a valid safetensors file (https://github.com/huggingface/safetensors)::

    header length N (8 bytes, little-endian) | header (N bytes of ASCII JSON, padded with spaces
    so the data starts at a multiple of 64) | the entries' bytes, packed in order of offset

The header maps each entry's name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (byte
offsets from the data start) and holds ``"__metadata__": {"format": "pt", "dacapo_store":
STRUCTURE}``, where STRUCTURE is the JSON text ``{"version": 1, "storages": [[entry, location],
...], "tensors": [...], "root": ...}`` of :mod:`~dacapo_store.state_structure`: each storage of
the state dict is one entry, and the tensors are views of them. A storage that one tensor covers
whole and contiguously, in an element type safetensors has, is stored under that tensor's path in
the state dict (keys joined with ``"."``: ``"0.weight"``, ``"state.0.exp_avg"``), so
``safetensors.torch.load_file`` returns a model's state dict by its own names; any other storage
(tied weights after the first, views, strides, types safetensors lacks, a name taken or starting
with ``"__"``) is an entry ``"__storage__.N"``. See ``docs/format.md``.

:class:`PlannedPayload` writes a payload piece by piece (the package's own writers need the
whole payload in memory or a path); :func:`payload_layout` checks a payload's header and returns
where each tensor lies, which :func:`load` turns into tensors viewing the payload's memory.
"""

from __future__ import annotations

import ctypes
import json
import json.encoder
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from safetensors.torch import _TYPES as _SAFETENSORS_DTYPES

from .gc_pause import gc_paused
from .state_structure import DTYPES, build, check_extent, describe, parse_json, tensor_paths

ALIGNMENT = 64
"""The data starts at a multiple of this many bytes (the header is padded with spaces)."""
MAX_HEADER_BYTES = 100_000_000
"""The largest header read (safetensors' own limit)."""
STRUCTURE_KEY = "dacapo_store"
"""The ``__metadata__`` key holding the state dict's structure."""
STRUCTURE_VERSION = 1
STORAGE_PREFIX = "__storage__."
_LENGTH = struct.Struct("<Q")
_GATHER_BYTES = 1 << 20
_CPU = torch.device("cpu")
_HEADER_DEPTH = 3
"""``{"name": {"data_offsets": [...]}}``: no valid header nests deeper."""

SAFETENSORS_DTYPE: dict[torch.dtype, str] = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}
"""safetensors' name of each element type it holds (``torch.float32`` -> ``"F32"``)."""
_ENTRY_DTYPE = {name: SAFETENSORS_DTYPE[dtype] for name, dtype in DTYPES.items() if dtype in SAFETENSORS_DTYPE}
"""The same by the torch names of structures (``"float32"`` -> ``"F32"``)."""


def is_safetensors(head: bytes) -> bool:
    """Whether a payload starting with ``head`` (at least 9 bytes) looks like this layout: a
    header length within :data:`MAX_HEADER_BYTES` and a header starting with ``{`` (a zip
    archive's or a flat v1 payload's first bytes read as a length are far larger)."""
    return len(head) > _LENGTH.size and _LENGTH.unpack_from(head)[0] <= MAX_HEADER_BYTES and head[8:9] == b"{"


@dataclass(frozen=True)
class PlannedPayload:
    """A state dict planned as a payload: the padded header and the storages to write after it,
    in order (held, so that their memory stays valid until written)."""

    header: bytes
    storages: list[torch.UntypedStorage]

    def write(self, write: Callable[[Any], object]) -> None:
        """Hand the payload to ``write`` piece by piece (bytes or memoryviews, in order); a
        piece is only valid during the call.

        Storages smaller than :data:`_GATHER_BYTES` are copied together into pieces of up to
        that size (one call per storage costs more than the copy where there are thousands)."""
        write(_LENGTH.pack(len(self.header)))
        write(self.header)
        gathered = (ctypes.c_char * _GATHER_BYTES)()
        gathered_view = memoryview(gathered).cast("B")
        address, filled = ctypes.addressof(gathered), 0
        for storage in self.storages:
            size = storage.nbytes()
            if not size:
                continue
            host = storage if storage.device == _CPU else storage.cpu()
            if filled + size > _GATHER_BYTES and filled:
                write(gathered_view[:filled])
                filled = 0
            if size >= _GATHER_BYTES:
                write(memoryview((ctypes.c_char * size).from_address(host.data_ptr())).cast("B"))
            else:
                ctypes.memmove(address + filled, host.data_ptr(), size)
                filled += size
        if filled:
            write(gathered_view[:filled])


def plan(state: Any) -> PlannedPayload:
    """Plan ``state`` as a payload (one walk; no tensor data is read yet).

    Raises:
        state_structure.Undescribable: ``state`` holds something only ``torch.save`` stores.
    """
    with gc_paused():
        structure = describe(state)
        entries = _entries(structure)
        largest_first = [-_ITEMSIZE[dtype] for _, dtype, _ in entries]
        order = sorted(range(len(entries)), key=largest_first.__getitem__)  # stable: ties in storage order
        description = {
            "version": STRUCTURE_VERSION,
            "storages": [[name, location] for (name, _, _), location in zip(entries, structure.locations)],
            "tensors": structure.tensors,
            "root": structure.root,
        }
        metadata = {"format": "pt", STRUCTURE_KEY: _json(description)}
        # The header {"__metadata__": metadata, name: {"dtype", "shape", "data_offsets"}, ...}
        # spelled out entry by entry as json.dumps writes it (about half the time of building
        # and encoding a dict per entry): names escaped by json's own encoder, shapes lists of
        # ints, whose str() is their JSON but for spaces.
        pieces = [f'"__metadata__":{_json(metadata)}']
        position = 0
        for s in order:
            name, dtype, shape = entries[s]
            end = position + structure.nbytes[s]
            shape_json = str(shape).replace(" ", "")
            pieces.append(f'{_json_string(name)}:{{"dtype":"{dtype}","shape":{shape_json},"data_offsets":[{position},{end}]}}')
            position = end
        encoded = f"{{{','.join(pieces)}}}".encode("ascii")
    encoded += b" " * (-(_LENGTH.size + len(encoded)) % ALIGNMENT)
    return PlannedPayload(encoded, [structure.storages[s] for s in order])


_json_string = json.encoder.encode_basestring_ascii
"""A string as JSON text, as :func:`json.dumps` writes it (``ensure_ascii``)."""


def _json(value: Any) -> str:
    """``value`` as compact JSON (no cycle check: what :func:`plan` encodes is a tree it built)."""
    return json.dumps(value, separators=(",", ":"), check_circular=False)


_ITEMSIZE = {name: dtype.itemsize for name, dtype in _SAFETENSORS_DTYPES.items()}
"""The size in bytes of an element of each safetensors dtype (``"F32"`` -> 4)."""


def _entries(structure: Any) -> list[tuple[str, str, list[int]]]:
    """The safetensors entry ``(name, dtype, shape)`` of each storage: named by the path of the
    first tensor covering it whole and contiguously (if that name is free), else
    ``__storage__.N`` holding its bytes as elements of its first tensor's type where they divide
    evenly, else as bytes."""
    entries: list[tuple[str, str, list[int]] | None] = [None] * len(structure.storages)
    taken: set[str] = set()
    for record, name in zip(structure.tensors, structure.names):
        if name is None:
            continue
        index = record[0]
        if entries[index] is not None or name in taken or name.startswith("__"):
            continue
        st_dtype = _ENTRY_DTYPE.get(record[1])
        if st_dtype is None:
            continue
        entries[index] = (name, st_dtype, record[2])
        taken.add(name)
    if None in entries:
        for record in structure.tensors:
            index = record[0]
            if entries[index] is None:
                nbytes = structure.nbytes[index]
                st_dtype = _ENTRY_DTYPE.get(record[1], "U8")
                if nbytes % _ITEMSIZE[st_dtype]:
                    st_dtype = "U8"
                entries[index] = (f"{STORAGE_PREFIX}{index}", st_dtype, [nbytes // _ITEMSIZE[st_dtype]])
    return entries  # type: ignore[return-value]


def _contiguous_strides(shape: list[int]) -> list[int]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return strides[::-1]


class StorageLayout(NamedTuple):
    """One storage of a payload: its safetensors entry ``name``, its bytes
    ``memory[begin:end]`` (offsets from the payload's start) and its torch ``location``."""

    name: str
    begin: int
    end: int
    location: str


class TensorLayout(NamedTuple):
    """One tensor of a payload: a view of ``storage`` (an index into
    :attr:`PayloadLayout.storages`) of ``dtype``, ``shape``, ``stride`` and ``storage_offset``
    (in elements), checked to lie inside that storage."""

    storage: int
    dtype: torch.dtype
    shape: list[int]
    stride: list[int]
    storage_offset: int
    requires_grad: bool
    is_parameter: bool


@dataclass(frozen=True)
class PayloadLayout:
    """Where everything of a checked payload lies (see :func:`payload_layout`)."""

    storages: list[StorageLayout]
    tensors: list[TensorLayout]
    root: Any
    """The structure's JSON value (``{"t": i}`` stands for ``tensors[i]``)."""

    def paths(self) -> list[tuple[Any, ...] | None]:
        """Per tensor, the keys and indices leading to it in the state dict (its first use:
        ``("state", 0, "exp_avg")``), or ``None`` for a tensor the state dict never uses."""
        try:
            found = tensor_paths(self.root)
        except (ValueError, TypeError, IndexError) as error:
            raise ValueError(f"a malformed structure ({error})") from None
        return [found.get(i) for i in range(len(self.tensors))]

    def byte_range(self, tensor: int) -> tuple[int, int] | None:
        """The payload bytes ``[begin, end)`` holding tensor ``tensor``'s elements in order, if
        it is contiguous (what can be copied straight into a tensor of its shape and dtype);
        ``None`` for other strides."""
        record = self.tensors[tensor]
        if record.stride != _contiguous_strides(record.shape) and math.prod(record.shape) > 1:
            return None
        begin = self.storages[record.storage].begin + record.storage_offset * record.dtype.itemsize
        return begin, begin + math.prod(record.shape) * record.dtype.itemsize


def payload_layout(memory: Any) -> PayloadLayout:
    """Check the payload in ``memory`` (anything a memoryview takes) and return its layout.

    Checked: the header length fits the payload and :data:`MAX_HEADER_BYTES`; the header is ASCII
    JSON nested no deeper than a valid one (measured in linear time before parsing); entries
    have safetensors dtypes, shapes of non-negative integers and offsets whose size matches
    dtype x shape, packed from the data start to the payload's end without gap or overlap (as
    safetensors requires); the structure's storages name distinct entries and every tensor lies
    inside its storage. A safetensors file without dacapo-store's structure is read as a dict
    of its entries (in header order).

    Raises:
        ValueError (also TypeError, KeyError, IndexError): ``memory`` is not a valid payload.
    """
    view = memoryview(memory).cast("B")
    if len(view) < _LENGTH.size:
        raise ValueError("shorter than the safetensors header length")
    (header_size,) = _LENGTH.unpack_from(view)
    if header_size > MAX_HEADER_BYTES or header_size > len(view) - _LENGTH.size:
        raise ValueError(f"a header of {header_size} bytes does not fit the payload of {len(view)}")
    data_start = _LENGTH.size + header_size
    header = parse_json(bytes(view[_LENGTH.size : data_start]), _HEADER_DEPTH)
    if type(header) is not dict:
        raise ValueError("a header that is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if type(metadata) is not dict or any(type(value) is not str for value in metadata.values()):
        raise ValueError("__metadata__ that is not a map of strings")
    entries = _checked_entries(header, len(view) - data_start, data_start)
    if STRUCTURE_KEY not in metadata:
        return _plain_layout(header, entries)
    return _structured_layout(parse_json(metadata[STRUCTURE_KEY].encode("ascii")), entries)


def _checked_entries(header: dict[str, Any], data_bytes: int, data_start: int) -> dict[str, tuple[int, int, str, list[int]]]:
    """The header's entries as ``name -> (begin, end, dtype, shape)``, offsets from the
    payload's start, checked (see :func:`payload_layout`)."""
    entries: dict[str, tuple[int, int, str, list[int]]] = {}
    for name, entry in header.items():
        if type(entry) is not dict or entry.keys() != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"entry {name!r} is not a safetensors tensor entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if type(dtype) is not str or dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"entry {name!r} has an unknown dtype {dtype!r}")
        if type(shape) is not list or any(type(n) is not int or n < 0 for n in shape):
            raise ValueError(f"entry {name!r} has a malformed shape")
        if type(offsets) is not list or len(offsets) != 2 or any(type(n) is not int for n in offsets):
            raise ValueError(f"entry {name!r} has malformed data_offsets")
        begin, end = offsets
        if end - begin != math.prod(shape) * _ITEMSIZE[dtype]:
            raise ValueError(f"entry {name!r} holds {end - begin} bytes, its dtype and shape need another size")
        entries[name] = (begin, end, dtype, shape)
    position = 0
    for name, (begin, end, _, _) in sorted(entries.items(), key=lambda item: (item[1][0], item[1][1])):
        if begin != position:
            raise ValueError(f"entry {name!r} starts at {begin}: entries must follow each other from 0")
        position = end
    if position != data_bytes:
        raise ValueError(f"the entries hold {position} bytes, the payload's data {data_bytes}")
    return {name: (begin + data_start, end + data_start, dtype, shape) for name, (begin, end, dtype, shape) in entries.items()}


def _plain_layout(header: dict[str, Any], entries: dict[str, tuple[int, int, str, list[int]]]) -> PayloadLayout:
    """A foreign safetensors file: a dict of its entries, each a contiguous tensor."""
    storages, tensors, pairs = [], [], []
    for i, (name, (begin, end, dtype, shape)) in enumerate(entries.items()):
        storages.append(StorageLayout(name, begin, end, "cpu"))
        tensors.append(TensorLayout(i, _SAFETENSORS_DTYPES[dtype], shape, _contiguous_strides(shape), 0, False, False))
        pairs += [name, {"t": i}]
    return PayloadLayout(storages, tensors, {"d": pairs})


def _structured_layout(structure: Any, entries: dict[str, tuple[int, int, str, list[int]]]) -> PayloadLayout:
    """The layout the structure describes, over the checked ``entries``."""
    if type(structure) is not dict or structure.get("version") != STRUCTURE_VERSION:
        raise ValueError(f"not a version {STRUCTURE_VERSION} dacapo-store structure")
    storage_records, tensor_records = structure["storages"], structure["tensors"]
    if type(storage_records) is not list or type(tensor_records) is not list:
        raise ValueError("storages or tensors that are not lists")
    storages: list[StorageLayout] = []
    for name, location in storage_records:
        if type(name) is not str or type(location) is not str or name not in entries:
            raise ValueError(f"a storage of entry {name!r} that the header does not hold")
        begin, end, _, _ = entries.pop(name)  # so no two storages share an entry
        storages.append(StorageLayout(name, begin, end, location))
    tensors = []
    for index, dtype_name, shape, stride, offset, requires_grad, is_parameter in tensor_records:
        if type(index) is not int or not 0 <= index < len(storages):
            raise ValueError(f"a tensor of storage {index!r}")
        dtype = DTYPES[dtype_name]
        storage = storages[index]
        check_extent(shape, stride, offset, dtype.itemsize, storage.end - storage.begin)
        tensors.append(TensorLayout(index, dtype, shape, stride, offset, requires_grad is True, is_parameter is True))
    return PayloadLayout(storages, tensors, structure["root"])


def load(memory: Any, restore: Callable[[torch.UntypedStorage, str], torch.UntypedStorage] | None) -> Any:
    """Build the state dict of the payload in ``memory`` (a writable buffer the caller gives
    up: an ``mmap``, a ``bytearray`` or a memoryview of them; CPU tensors are views of it and
    keep it alive).

    ``restore(storage, location)`` places each storage, as ``torch.load``'s ``map_location``
    callables do (it gets a CPU view of the bytes and the location tag written); ``None`` builds
    tensors on the meta device without reading any data.

    Raises:
        ValueError, TypeError, KeyError, IndexError: ``memory`` is not a valid payload
            (``serialization`` reports it as a corrupt checkpoint); as ``restore``.
    """
    with gc_paused():
        layout = payload_layout(memory)
        if restore is None:
            storages = [torch.UntypedStorage(s.end - s.begin, device="meta") for s in layout.storages]
        else:
            whole = torch.frombuffer(memory, dtype=torch.uint8).untyped_storage()
            storages = [restore(whole[s.begin : s.end], s.location) for s in layout.storages]
        tensors = []
        for t in layout.tensors:
            storage = storages[t.storage]
            tensor = torch.empty(0, dtype=t.dtype, device=storage.device).set_(storage, t.storage_offset, t.shape, t.stride)
            if t.is_parameter:
                tensor = torch.nn.Parameter(tensor, requires_grad=t.requires_grad)
            elif t.requires_grad:
                tensor.requires_grad_()
            tensors.append(tensor)
        return build(layout.root, tensors)
