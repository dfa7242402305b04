"""The structure of a state dict as JSON: what both payload formats (the safetensors layout
and the legacy flat v1 payload) write beside the tensors' bytes, and how it is read back.

:func:`describe` walks a state dict once and returns its :class:`Structure`: the storages its
tensors view, one record per tensor object and the JSON value of the containers. A value is a
JSON string, integer, float (also ``NaN``/``Infinity``), ``true``/``false`` or ``null``
standing for itself, or an object with exactly one tag: ``{"t": i}`` tensor ``i``, ``{"l":
[...]}`` a list, ``{"u": [...]}`` a tuple, ``{"d": [key, value, ...]}`` a dict, ``{"o": [key,
value, ...]}`` an ``OrderedDict`` (with ``"m": value`` for its ``_metadata``, which
``load_state_dict`` reads). A tensor record is ``[storage, dtype, shape, stride,
storage_offset, requires_grad, is_parameter]`` (``dtype`` a torch name, e.g. ``"float32"``;
shape, stride and offset in elements).

A state dict holding anything else (sets, bytes, complex scalars, ``torch.Size``, storages,
tensor attributes, sparse, quantized or meta tensors, a container referenced twice, an integer
of over :data:`MAX_INT_BITS` bits, containers nested deeper than :data:`MAX_DEPTH`, ...) raises
:class:`Undescribable`: the caller writes a ``torch.save`` archive instead.

:func:`build` makes the Python values back from checked records; :func:`parse_json` parses a
JSON text after checking its nesting in linear time, whatever the recursion limit.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Any

import numpy
import torch

from ._torch_internals import has_backward_hooks, storage_key

MAX_INT_BITS = 1024
"""Larger integers are left to ``torch.save``: Python refuses to parse integers of over 4,300
digits from text by default."""
MAX_DEPTH = 100
"""Containers nested deeper than this are left to ``torch.save`` (see ``state_checks``)."""
MAX_JSON_DEPTH = 2 * MAX_DEPTH + 8
"""The deepest bracket nesting a structure of :func:`describe` can have (two per container)."""

_DTYPE_NAMES = (
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
)
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in _DTYPE_NAMES if hasattr(torch, name)}
"""The element types a structure describes, by torch name (those of whole bytes this torch has)."""
DTYPE_NAME = {dtype: name for name, dtype in DTYPES.items()}
_PARAMETER = torch.nn.Parameter
_TENSOR_TYPES = (torch.Tensor, _PARAMETER)
_COMPLEX = {"complex32", "complex64", "complex128"}
_STRIDED = torch.strided


class Undescribable(Exception):
    """The state holds something the structure does not describe (the message says what)."""


@dataclass
class Structure:
    """A state dict described: ``root`` (its JSON value), ``tensors`` (the tensor records),
    ``storages`` (the storage objects, in order of first use, held so their memory stays valid),
    ``locations`` and ``nbytes`` (per storage) and ``names`` (per tensor record)."""

    root: Any = None
    tensors: list[list[Any]] = field(default_factory=list)
    storages: list[torch.UntypedStorage] = field(default_factory=list)
    names: list[str | None] = field(default_factory=list)
    """Per tensor record: the keys and indices leading to its first use from the root, joined
    with ``"."`` (``"state.0.exp_avg"``), if the tensor covers its storage whole, in order
    (contiguous, offset 0, as many bytes as the storage); ``None`` for a tensor that does not,
    or where a key on the way is neither a string nor an integer."""
    locations: list[str] = field(default_factory=list)
    """Per storage: torch's location tag (``"cpu"``, ``"cuda:0"``)."""
    nbytes: list[int] = field(default_factory=list)
    """Per storage: its size in bytes."""


class _Describer:
    """One walk over a state dict, filling a :class:`Structure`.

    The walk carries each value's ``name`` (its path joined with ``"."``, ``None`` once a key is
    neither a string nor an integer); the items of a container are named ``prefix + key``, the
    prefix being ``""`` at the root and the container's name and a dot below it."""

    def __init__(self) -> None:
        self.structure = Structure()
        self._storage_index: dict[int, int] = {}
        self._tensor_index: dict[int, int] = {}
        self._containers: set[int] = set()

    def value(self, value: Any, depth: int, name: str | None) -> Any:
        kind = type(value)
        if kind is str or kind is float or kind is bool or value is None:
            return value
        if kind is int:
            if value.bit_length() > MAX_INT_BITS:
                raise Undescribable(f"an integer of more than {MAX_INT_BITS} bits")
            return value
        if kind in _TENSOR_TYPES:
            return {"t": self.tensor(value, name)}
        if kind is tuple and not value:
            return {"u": []}  # the one empty tuple of the interpreter, met anywhere
        if depth >= MAX_DEPTH:
            raise Undescribable(f"containers nested deeper than {MAX_DEPTH}")
        if kind is dict or kind is list or kind is tuple or kind is collections.OrderedDict:
            if id(value) in self._containers:
                raise Undescribable("a container referenced twice (torch.save keeps it shared)")
            self._containers.add(id(value))
        prefix = None if name is None else f"{name}." if depth else ""
        if kind is list or kind is tuple:
            items = [self.value(item, depth + 1, None if prefix is None else f"{prefix}{i}") for i, item in enumerate(value)]
            return {"l" if kind is list else "u": items}
        if kind is dict:
            return {"d": self.items(value, depth, prefix)}
        if kind is collections.OrderedDict:
            return self.ordered_dict(value, depth, prefix)
        raise Undescribable(f"a value of type {kind.__qualname__}")

    def items(self, mapping: dict, depth: int, prefix: str | None) -> list[Any]:
        flat: list[Any] = []
        append, value, tensor = flat.append, self.value, self.tensor
        for key, item in mapping.items():
            kind = type(key)
            append(key if kind is str else value(key, depth + 1, None))
            name = None if prefix is None or (kind is not str and kind is not int) else f"{prefix}{key}"
            # A tensor item (most of a state dict's items) skips value()'s dispatch.
            append({"t": tensor(item, name)} if type(item) in _TENSOR_TYPES else value(item, depth + 1, name))
        return flat

    def ordered_dict(self, mapping: collections.OrderedDict, depth: int, prefix: str | None) -> dict:
        attributes = vars(mapping)
        encoded: dict[str, Any] = {"o": self.items(mapping, depth, prefix)}
        if "_metadata" in attributes:
            encoded["m"] = self.value(attributes["_metadata"], depth + 1, None)
        if attributes.keys() - {"_metadata"}:
            raise Undescribable("an OrderedDict with attributes other than _metadata")
        return encoded

    def tensor(self, tensor: torch.Tensor, name: str | None) -> int:
        """The index of ``tensor``'s record (one record per tensor object, as pickle keeps one)."""
        index = self._tensor_index.get(id(tensor))
        if index is not None:
            return index
        if vars(tensor):
            raise Undescribable("a tensor with Python attributes")
        dtype_name = DTYPE_NAME.get(tensor.dtype)  # quantized element types have none
        if dtype_name is None:
            raise Undescribable(f"a tensor of {tensor.dtype}")
        if tensor.layout is not _STRIDED or tensor.is_nested:
            raise Undescribable(f"a {tensor.layout} tensor")
        if tensor.is_neg() or (dtype_name in _COMPLEX and tensor.is_conj()):
            raise Undescribable("a tensor with a lazy conjugate or negation")
        requires_grad = tensor.requires_grad
        if requires_grad and not tensor.is_leaf:
            raise Undescribable("a tensor that is not a leaf of autograd")
        is_parameter = type(tensor) is _PARAMETER
        if is_parameter and has_backward_hooks(tensor):
            raise Undescribable("a parameter with backward hooks")
        structure = self.structure
        storage = tensor.untyped_storage()
        # One record per storage object, as torch.save keys them (views of one tensor and tied
        # weights share one; two storage objects over the same bytes get one each). The walk
        # holds every storage it met, so no key is reused while it runs.
        key = storage_key(storage)
        storage_index = self._storage_index.get(key)
        if storage_index is None:
            if tensor.is_cpu:  # the tensor's device is its storage's
                location = "cpu"
            elif tensor.is_cuda:
                location = torch.serialization.location_tag(storage)
            else:
                raise Undescribable(f"a tensor on {storage.device}")
            storage_index = self._storage_index[key] = len(structure.storages)
            structure.storages.append(storage)
            structure.locations.append(location)
            structure.nbytes.append(storage.nbytes())
        offset = tensor.storage_offset()
        structure.tensors.append([
            storage_index, dtype_name, [*tensor.shape], [*tensor.stride()], offset, requires_grad, is_parameter,
        ])
        whole = offset == 0 and tensor.nbytes == structure.nbytes[storage_index] and tensor.is_contiguous()
        structure.names.append(name if whole else None)
        self._tensor_index[id(tensor)] = index = len(structure.tensors) - 1
        return index


def describe(state: Any) -> Structure:
    """Describe ``state`` (one walk; no tensor data is read).

    Raises:
        Undescribable: ``state`` holds something only a ``torch.save`` archive stores.
    """
    describer = _Describer()
    describer.structure.root = describer.value(state, 0, "")
    return describer.structure


_SCAN_BYTES = 1 << 20
""":func:`check_json_depth` scans this many bytes at a time, so its scratch arrays stay within a
few times this size (and in the processor's cache) however long the text is."""


def check_json_depth(text: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON ``text`` nested deeper than ``limit`` brackets, without parsing it, in time
    linear in its length whatever the text is (a few vectorized passes over its bytes, none
    of them per string or per bracket in Python).

    The depth is the count of ``[`` and ``{`` less that of ``]`` and ``}``, outside strings. A
    string runs from a quote to the next quote not escaped (a quote after an odd run of
    backslashes is), or to the end of an unterminated text.

    Safe for any text, JSON or not: up to JSON's first syntax error (a backslash outside a
    string is one) this reads the text as ``json.loads`` does, which recurses once per bracket
    opened outside strings, so the parser never nests deeper than the depth checked here.

    Raises:
        ValueError: too deep.
    """
    data = numpy.frombuffer(text, dtype=numpy.uint8)
    depth = inside = 0  # carried from chunk to chunk, with whether the next byte is escaped
    escaping = False
    for start in range(0, len(data), _SCAN_BYTES):
        chunk = data[start : start + _SCAN_BYTES]
        events = chunk == ord('"')
        if escaping or text.find(b"\\", start, start + _SCAN_BYTES) >= 0:
            escaped = _escaped_positions(chunk, escaping)
            escaping = len(escaped) > 0 and int(escaped[-1]) == len(chunk)
            events[escaped[: len(escaped) - escaping]] = False
        folded = chunk | 0x20  # "[" and "]" fold onto "{" and "}" ('"' stays)
        events |= folded == ord("{")
        events |= folded == ord("}")
        kinds = folded[numpy.flatnonzero(events)]  # the unescaped quotes and the brackets
        if not len(kinds):
            continue
        parity = numpy.bitwise_xor.accumulate((kinds == ord('"')).view(numpy.uint8))
        steps = (kinds == ord("{")).view(numpy.int8) - (kinds == ord("}")).view(numpy.int8)
        steps[parity != inside] = 0  # brackets inside strings
        levels = numpy.cumsum(steps, dtype=numpy.int32)
        if depth + int(levels.max()) > limit:
            raise ValueError(f"JSON nested deeper than {limit}")
        depth += int(levels[-1])
        inside ^= int(parity[-1])


def _escaped_positions(chunk: numpy.ndarray, escaping: bool) -> numpy.ndarray:
    """The positions in ``chunk`` (up to its length) right after an odd run of backslashes, one
    before the chunk counting if ``escaping``."""
    backslashes = numpy.flatnonzero(chunk == ord("\\"))
    if escaping:
        backslashes = numpy.concatenate(([-1], backslashes))
    ends = numpy.flatnonzero(numpy.diff(backslashes, append=-1) != 1)  # each run's last backslash
    odd = numpy.diff(ends, prepend=-1) % 2 == 1
    return backslashes[ends[odd]] + 1


def parse_json(text: bytes, limit: int = MAX_JSON_DEPTH) -> Any:
    """Parse ASCII JSON ``text`` once its nesting is checked (so JSON's parser, which recurses
    in C, never meets more than ``limit`` levels whatever the recursion limit is).

    Raises:
        ValueError: not ASCII (``json.loads`` would guess UTF-16 or -32 from bytes, which the
            depth check would misread), too deep, or not JSON.
    """
    decoded = text.decode("ascii")
    check_json_depth(text, limit)
    return json.loads(decoded)


def check_extent(shape: Any, stride: Any, offset: Any, itemsize: int, nbytes: int) -> None:
    """Check that a tensor of ``shape``, ``stride`` and storage ``offset`` (in elements) lies
    inside its storage of ``nbytes``.

    Raises:
        ValueError: it does not, or a size, stride or the offset is negative or malformed.
    """
    if type(shape) is not list or type(stride) is not list or len(shape) != len(stride) or type(offset) is not int:
        raise ValueError("a tensor whose shape, strides or offset are malformed")
    if any(type(n) is not int for n in shape) or any(type(n) is not int for n in stride):
        raise ValueError("a tensor whose shape or strides are not integers")
    if offset < 0 or (shape and (min(shape) < 0 or min(stride) < 0)):
        raise ValueError("a tensor with a negative size, stride or offset")
    last = offset
    for size, step in zip(shape, stride):
        if size == 0:
            return
        last += (size - 1) * step
    if (last + 1) * itemsize > nbytes:
        raise ValueError(f"a tensor reaching element {last} of a storage of {nbytes} bytes")


def build_tensor(record: Any, nbytes: list[int], storages: list[torch.UntypedStorage]) -> torch.Tensor:
    """The tensor of one record, a view of its storage (checked to lie inside its ``nbytes``).

    Raises:
        ValueError, KeyError, IndexError, TypeError: a malformed record.
    """
    index, dtype_name, shape, stride, offset, requires_grad, is_parameter = record
    if type(index) is not int or index < 0:
        raise ValueError(f"a tensor of storage {index!r}")
    dtype = DTYPES[dtype_name]
    check_extent(shape, stride, offset, dtype.itemsize, nbytes[index])
    storage = storages[index]
    tensor = torch.empty(0, dtype=dtype, device=storage.device).set_(storage, offset, shape, stride)
    if is_parameter is True:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad is True)
    return tensor.requires_grad_() if requires_grad is True else tensor


def build(root: Any, tensors: list[torch.Tensor]) -> Any:
    """The Python value of the JSON value ``root`` (see the module doc), ``{"t": i}`` standing
    for ``tensors[i]``.

    Raises:
        ValueError, TypeError, IndexError: a malformed value.
    """
    return _Builder(tensors).value(root)


class _Builder:
    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.tensors = tensors

    def value(self, node: Any) -> Any:
        kind = type(node)
        if kind is not dict:
            if kind is list:
                raise ValueError("an untagged list in the structure")
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
        raise ValueError(f"an unknown tag {sorted(node)!r} in the structure")

    def pairs(self, flat: Any) -> list[tuple[Any, Any]]:
        if type(flat) is not list or len(flat) % 2:
            raise ValueError("a mapping that is not a list of key, value pairs")
        values = [self.value(item) for item in flat]
        return list(zip(values[0::2], values[1::2]))


def tensor_paths(root: Any) -> dict[int, tuple[Any, ...]]:
    """For each tensor index that ``root`` refers to, the keys and indices leading to its first
    use (dict keys as the Python values they stand for: ``("state", 0, "exp_avg")``).

    Raises:
        ValueError, TypeError: a malformed value (as :func:`build`).
    """
    found: dict[int, tuple[Any, ...]] = {}
    pending: list[tuple[Any, tuple[Any, ...]]] = [(root, ())]
    while pending:  # depth first, in document order
        node, path = pending.pop()
        if type(node) is not dict:
            continue
        if "t" in node and len(node) == 1:
            found.setdefault(node["t"], path)
            continue
        body = node.get("l", node.get("u"))
        if type(body) is list and len(node) == 1:
            pending.extend(reversed([(item, (*path, i)) for i, item in enumerate(body)]))
            continue
        pairs = node.get("d", node.get("o"))
        if type(pairs) is list:
            keys = [_Builder([]).value(key) for key in pairs[0::2]]
            pending.extend(reversed([(item, (*path, key)) for key, item in zip(keys, pairs[1::2])]))
    return found
