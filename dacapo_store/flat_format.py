"""The flat payload format: a state dict's structure as JSON and its tensors' bytes laid out
flat, written and read without pickling.

``torch.save`` pickles a state dict and writes each tensor's storage as its own zip record;
``torch.load(weights_only=True)`` unpickles it again in Python. Both cost tens of microseconds
per tensor, which dominates a checkpoint of many small tensors (an optimizer's state for 5,000
parameters is 20,000 tensors). This format describes the whole structure in one JSON header
(built and parsed in C by :mod:`json`) and builds every tensor as a view of the verified bytes,
a few microseconds each.

Layout of a payload::

    MAGIC (8 bytes) | header length (8 bytes, little-endian) | header (JSON, ASCII)
    | zero padding to ALIGNMENT | storage 0 | padding | storage 1 | ...

The data start (after the padding) and each storage are at multiples of :data:`ALIGNMENT`; a
storage's offset counts from the data start, and storages follow each other without overlap.
The header is ``{"version": 1, "storages": [[offset, nbytes, location], ...], "tensors": [[storage,
dtype, shape, stride, storage_offset, requires_grad, is_parameter], ...], "root": value}``;
``location`` is torch's location tag (``"cpu"``, ``"cuda:0"``). A value is a JSON string,
integer, float (also ``NaN``/``Infinity``), ``true``/``false`` or ``null`` standing for itself,
or an object with exactly one tag: ``{"t": i}`` tensor ``i``, ``{"l": [...]}`` a list, ``{"u":
[...]}`` a tuple, ``{"d": [key, value, ...]}`` a dict, ``{"o": [key, value, ...]}`` an
``OrderedDict`` (with ``"m": value`` for its ``_metadata``, which ``load_state_dict`` reads).

A state dict holding anything else (sets, complex scalars, ``torch.Size``, storages, tensor
attributes, sparse or quantized tensors, a container referenced twice, an integer of over
:data:`MAX_INT_BITS` bits, ...) is not flat:
:func:`plan` raises :class:`NotFlat` and the caller writes a ``torch.save`` archive instead,
which stays readable as before. Sharing is kept as ``torch.save`` keeps it: tensors that view
one storage object (tied weights) load as views of one storage again.

A header is checked before anything it describes is made (see :func:`load`), so a damaged or
hostile payload raises an error, never a tensor reading bytes it does not own.
"""

from __future__ import annotations

import collections
import ctypes
import json
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy
import torch

from .gc_pause import gc_paused

MAGIC = b"\x93DCSFLAT"
"""The first bytes of a flat payload (a ``torch.save`` archive starts with ``PK\\x03\\x04``)."""
VERSION = 1
ALIGNMENT = 64
"""Storages start at multiples of this many bytes (as in ``torch.save``'s archives)."""
_PREFIX = struct.Struct("<8sQ")
MAX_INT_BITS = 1024
"""Larger integers are left to ``torch.save``: Python refuses to parse integers of over 4,300
digits from text by default."""
MAX_DEPTH = 100
"""Containers nested deeper than this are left to ``torch.save`` (see ``state_checks``)."""

_DTYPE_NAMES = (
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
)
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in _DTYPE_NAMES if hasattr(torch, name)}
"""The element types a flat payload holds, by name (those of whole bytes this torch has)."""
_DTYPE_NAME = {dtype: name for name, dtype in DTYPES.items()}
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


class NotFlat(Exception):
    """The state holds something the flat format does not describe (the message says what)."""


_ZEROS = bytes(ALIGNMENT)


def _padding(offset: int) -> int:
    return -offset % ALIGNMENT


@dataclass(frozen=True)
class FlatPayload:
    """A state dict planned as a flat payload: the encoded header and the storages to write
    after it (held, so that their memory stays valid until written)."""

    header: bytes
    storages: list[torch.UntypedStorage]

    def write(self, write: Callable[[Any], object]) -> None:
        """Hand the payload to ``write`` piece by piece (bytes or memoryviews, in order);
        a piece is only valid during the call."""
        write(_PREFIX.pack(MAGIC, len(self.header)))
        write(self.header)
        write(_ZEROS[: _padding(_PREFIX.size + len(self.header))])
        position = 0
        for storage in self.storages:
            padding = _padding(position)
            if padding:
                write(_ZEROS[:padding])
                position += padding
            size = storage.nbytes()
            if size:
                host = storage if storage.device.type == "cpu" else storage.cpu()
                write(memoryview((ctypes.c_char * size).from_address(host.data_ptr())).cast("B"))
                position += size


class _Planner:
    """One walk over a state dict: the JSON value of its structure, its tensors and their storages."""

    def __init__(self) -> None:
        self.storages: list[torch.UntypedStorage] = []
        self.storage_records: list[list[Any]] = []
        self.tensors: list[list[Any]] = []
        self._storage_index: dict[int, int] = {}
        self._tensor_index: dict[int, int] = {}
        self._containers: set[int] = set()
        self._data_size = 0

    def value(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str or kind is float or kind is bool or value is None:
            return value
        if kind is int:
            if value.bit_length() > MAX_INT_BITS:
                raise NotFlat(f"an integer of more than {MAX_INT_BITS} bits")
            return value
        if kind in _TENSOR_TYPES:
            return {"t": self.tensor(value)}
        if kind is tuple and not value:
            return {"u": []}  # the one empty tuple of the interpreter, met anywhere
        if depth >= MAX_DEPTH:
            raise NotFlat(f"containers nested deeper than {MAX_DEPTH}")
        if kind is dict or kind is list or kind is tuple or kind is collections.OrderedDict:
            if id(value) in self._containers:
                raise NotFlat("a container referenced twice (torch.save keeps it shared)")
            self._containers.add(id(value))
        if kind is list:
            return {"l": [self.value(item, depth + 1) for item in value]}
        if kind is tuple:
            return {"u": [self.value(item, depth + 1) for item in value]}
        if kind is dict:
            return {"d": self.items(value, depth)}
        if kind is collections.OrderedDict:
            return self.ordered_dict(value, depth)
        raise NotFlat(f"a value of type {kind.__qualname__}")

    def items(self, mapping: dict, depth: int) -> list[Any]:
        flat: list[Any] = []
        for key, item in mapping.items():
            flat.append(self.value(key, depth + 1))
            flat.append(self.value(item, depth + 1))
        return flat

    def ordered_dict(self, mapping: collections.OrderedDict, depth: int) -> dict[str, Any]:
        attributes = vars(mapping)
        encoded: dict[str, Any] = {"o": self.items(mapping, depth)}
        if "_metadata" in attributes:
            encoded["m"] = self.value(attributes["_metadata"], depth + 1)
        if attributes.keys() - {"_metadata"}:
            raise NotFlat("an OrderedDict with attributes other than _metadata")
        return encoded

    def tensor(self, tensor: torch.Tensor) -> int:
        """The index of ``tensor``'s record (one record per tensor object, as pickle keeps one)."""
        index = self._tensor_index.get(id(tensor))
        if index is not None:
            return index
        if vars(tensor):
            raise NotFlat("a tensor with Python attributes")
        dtype_name = _DTYPE_NAME.get(tensor.dtype)  # quantized element types have none
        if dtype_name is None:
            raise NotFlat(f"a tensor of {tensor.dtype}")
        if tensor.layout is not torch.strided or tensor.is_nested:
            raise NotFlat(f"a {tensor.layout} tensor")
        if tensor.is_neg() or (tensor.is_complex() and tensor.is_conj()):
            raise NotFlat("a tensor with a lazy conjugate or negation")
        if tensor.requires_grad and not tensor.is_leaf:
            raise NotFlat("a tensor that is not a leaf of autograd")
        is_parameter = type(tensor) is torch.nn.Parameter
        if is_parameter and tensor._backward_hooks:
            raise NotFlat("a parameter with backward hooks")
        self.tensors.append([
            self.storage(tensor.untyped_storage()), dtype_name, list(tensor.shape), list(tensor.stride()),
            tensor.storage_offset(), tensor.requires_grad, is_parameter,
        ])
        self._tensor_index[id(tensor)] = index = len(self.tensors) - 1
        return index

    def storage(self, storage: torch.UntypedStorage) -> int:
        size = storage.nbytes()
        device = storage.device
        if device.type != "cpu" and device.type != "cuda":
            raise NotFlat(f"a tensor on {device}")
        # One record per storage object, as torch.save keys them (views of one tensor and tied
        # weights share one; two storage objects over the same bytes get one each). The planner
        # holds every storage it met, so no key is reused while it plans.
        key = storage._cdata
        index = self._storage_index.get(key)
        if index is None:
            index = self._storage_index[key] = len(self.storages)
            location = "cpu" if device.type == "cpu" else torch.serialization.location_tag(storage)
            self._data_size += _padding(self._data_size)
            self.storage_records.append([self._data_size, size, location])
            self.storages.append(storage)
            self._data_size += size
        return index


def plan(state: Any) -> FlatPayload:
    """Plan ``state`` as a flat payload (one walk; no tensor data is read yet).

    Raises:
        NotFlat: ``state`` holds something only a ``torch.save`` archive stores.
    """
    planner = _Planner()
    with gc_paused():
        root = planner.value(state, 0)
        header = {"version": VERSION, "storages": planner.storage_records, "tensors": planner.tensors, "root": root}
        return FlatPayload(json.dumps(header, separators=(",", ":")).encode("ascii"), planner.storages)


def is_flat(head: bytes) -> bool:
    """Whether a payload starting with ``head`` (at least 8 bytes) is a flat payload."""
    return head[: len(MAGIC)] == MAGIC


MAX_HEADER_DEPTH = 2 * MAX_DEPTH + 8
"""The deepest bracket nesting a header of :func:`plan` can have (two levels per container)."""
SAFE_RECURSION_LIMIT = 5000
"""Up to this recursion limit, a too deeply nested header makes JSON's parser (which recurses
in C) raise RecursionError; above it, the parser could overflow the C stack first, so the
header's depth is measured before it is parsed."""
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _check_depth(header: bytes) -> None:
    """Refuse a header nested deeper than :data:`MAX_HEADER_DEPTH`, without parsing it.

    Raises:
        ValueError: too deep.
    """
    skeleton = numpy.frombuffer(_JSON_STRING.sub(b'""', header), dtype=numpy.uint8)
    steps = ((skeleton == ord("[")) | (skeleton == ord("{"))).view(numpy.int8)
    steps = steps - ((skeleton == ord("]")) | (skeleton == ord("}"))).view(numpy.int8)
    depth = numpy.cumsum(steps, dtype=numpy.int32)
    if len(depth) and int(depth.max()) > MAX_HEADER_DEPTH:
        raise ValueError(f"a header nested deeper than {MAX_HEADER_DEPTH}")


def load(memory: Any, restore: Callable[[torch.UntypedStorage, str], torch.UntypedStorage] | None) -> Any:
    """Build the state dict of the flat payload in ``memory`` (a writable buffer the caller
    gives up: an ``mmap``, a ``bytearray`` or a memoryview of them; the CPU tensors are views of
    it and keep it alive).

    ``restore(storage, location)`` places each storage, as ``torch.load``'s ``map_location``
    callables do (it gets a CPU view of the bytes and the location tag written); ``None`` builds
    tensors on the meta device without reading any data.

    Every record is checked before it is used: storages in order, without overlap, inside the
    payload (so all of them together hold at most the payload's bytes); every tensor inside its
    storage, also where ``restore`` returns a copy that ``set_`` could grow.

    Raises:
        ValueError, TypeError, KeyError, IndexError, RuntimeError: ``memory`` is not a valid flat
            payload (``serialization`` reports it as a corrupt checkpoint), or as ``restore``.
    """
    view = memoryview(memory).cast("B")
    if len(view) < _PREFIX.size:
        raise ValueError("shorter than the flat payload's prefix")
    magic, header_size = _PREFIX.unpack_from(view)
    if magic != MAGIC or header_size > len(view) - _PREFIX.size:
        raise ValueError("not a flat payload, or its header does not fit in it")
    encoded = bytes(view[_PREFIX.size : _PREFIX.size + header_size])
    # Parsed as the ASCII text plan writes (json.loads would guess UTF-16 or -32 from bytes), so
    # the depth check reads exactly the characters the parser gets.
    text = encoded.decode("ascii")
    if sys.getrecursionlimit() > SAFE_RECURSION_LIMIT:
        _check_depth(encoded)
    with gc_paused():
        header = json.loads(text)
        if type(header) is not dict or header.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} flat payload header")
        data_start = _PREFIX.size + header_size
        data_start += _padding(data_start)
        records = _storage_records(header["storages"], len(view) - data_start)
        storages = _storages(records, memory, data_start, restore)
        tensors = [_tensor(record, records, storages) for record in header["tensors"]]
        return _Builder(tensors).value(header["root"])


def _storage_records(records: Any, data_bytes: int) -> list[tuple[int, int, str]]:
    """The header's storage records ``(offset, nbytes, location)``, checked: in order of offset,
    not overlapping, inside the ``data_bytes`` after the data start."""
    if type(records) is not list:
        raise ValueError("storage records that are not a list")
    checked: list[tuple[int, int, str]] = []
    end = 0
    for offset, nbytes, location in records:
        if not (type(offset) is int and type(nbytes) is int and type(location) is str):
            raise ValueError("a storage record of the wrong types")
        if offset < end or offset % ALIGNMENT or nbytes < 0 or offset + nbytes > data_bytes:
            raise ValueError(
                f"a storage of {nbytes} bytes at {offset} is unaligned, overlaps another or does not fit in the payload"
            )
        checked.append((offset, nbytes, location))
        end = offset + nbytes
    return checked


def _storages(
    records: list[tuple[int, int, str]], memory: Any, data_start: int, restore: Callable | None
) -> list[torch.UntypedStorage]:
    """The storages of the checked ``records``: CPU views of ``memory`` placed by ``restore``,
    or meta storages of their sizes (``restore`` ``None``)."""
    if restore is None:
        return [torch.UntypedStorage(nbytes, device="meta") for _, nbytes, _ in records]
    whole = torch.frombuffer(memory, dtype=torch.uint8).untyped_storage()
    return [
        restore(whole[data_start + offset : data_start + offset + nbytes], location)
        for offset, nbytes, location in records
    ]


def _tensor(record: Any, records: list[tuple[int, int, str]], storages: list[torch.UntypedStorage]) -> torch.Tensor:
    """The tensor of one header record, a view of its storage (checked to lie inside it)."""
    index, dtype_name, shape, stride, offset, requires_grad, is_parameter = record
    if type(index) is not int or index < 0:
        raise ValueError(f"a tensor of storage {index!r}")
    dtype = DTYPES[dtype_name]
    _check_extent(shape, stride, offset, dtype.itemsize, records[index][1])
    storage = storages[index]
    tensor = torch.empty(0, dtype=dtype, device=storage.device).set_(storage, offset, shape, stride)
    if is_parameter is True:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad is True)
    return tensor.requires_grad_() if requires_grad is True else tensor


def _check_extent(shape: Any, stride: Any, offset: Any, itemsize: int, nbytes: int) -> None:
    """Check that a tensor of ``shape``, ``stride`` and storage ``offset`` (in elements) lies
    inside its storage of ``nbytes``.

    Raises:
        ValueError: it does not, or a size, stride or the offset is negative or not given.
    """
    if type(shape) is not list or type(stride) is not list or len(shape) != len(stride) or type(offset) is not int:
        raise ValueError("a tensor whose shape, strides or offset are malformed")
    if offset < 0 or (shape and (min(shape) < 0 or min(stride) < 0)):
        raise ValueError("a tensor with a negative size, stride or offset")
    last = offset
    for size, step in zip(shape, stride):
        if size == 0:
            return
        last += (size - 1) * step
    if (last + 1) * itemsize > nbytes:
        raise ValueError(f"a tensor reaching element {last} of a storage of {nbytes} bytes")


class _Builder:
    """The Python values of a header's ``root`` (see the module doc for the tags)."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.tensors = tensors

    def value(self, node: Any) -> Any:
        kind = type(node)
        if kind is not dict:
            if kind is list:
                raise ValueError("an untagged list in the header")
            return node
        if len(node) == 1:
            [(tag, body)] = node.items()
            if tag == "t":
                if type(body) is not int or body < 0:
                    raise ValueError(f"a reference to tensor {body!r}")
                return self.tensors[body]
            if tag in ("l", "u") and type(body) is list:
                items = [self.value(item) for item in body]
                return items if tag == "l" else tuple(items)
            if tag == "d":
                return dict(self.pairs(body))
        if node.keys() in ({"o"}, {"o", "m"}):
            mapping = collections.OrderedDict(self.pairs(node["o"]))
            if "m" in node:
                mapping._metadata = self.value(node["m"])  # type: ignore[attr-defined]
            return mapping
        raise ValueError(f"an unknown tag {sorted(node)!r} in the header")

    def pairs(self, flat: Any) -> list[tuple[Any, Any]]:
        if type(flat) is not list or len(flat) % 2:
            raise ValueError("a mapping that is not a list of key, value pairs")
        values = [self.value(item) for item in flat]
        return list(zip(values[0::2], values[1::2]))
