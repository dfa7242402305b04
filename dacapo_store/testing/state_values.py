"""Values a state dict may hold, sorted by whether ``torch.load(weights_only=True)`` reads them
back: the catalogue behind the contract suite's "every stored checkpoint loads" tests.

Each entry is a ``pytest.param`` of a zero-argument factory (fresh objects per test), with the
value's label as its id. :data:`LOADABLE_VALUES` must round-trip through every store;
:data:`REFUSED_VALUES` must be refused by ``put_weights`` before anything is stored. The
library's own tests check both lists against torch itself, so the catalogue cannot drift from
what torch loads.
"""

from __future__ import annotations

import array
import collections
import datetime
import decimal
import enum
import fractions
import io
import json
import math
import pathlib
import pickle
import struct
import uuid
import zipfile
from typing import Any, Callable

import numpy as np
import pytest
import torch

from ..flat_format import ALIGNMENT, MAGIC


class _Colour(enum.Enum):
    RED = 1


class _Level(enum.IntEnum):
    HIGH = 2


class _Point(tuple):
    """A tuple subclass (what ``collections.namedtuple`` makes)."""


_Pair = collections.namedtuple("_Pair", "a b")


class _Settings(dict):
    """A dict subclass."""


class _Plain:
    """A custom object."""


class _TaggedTensor(torch.Tensor):
    """A tensor subclass."""


def _with_attribute(value: Any) -> torch.Tensor:
    tensor = torch.arange(3.0)
    tensor.note = value
    return tensor


def _tensor_referring_to_itself() -> torch.Tensor:
    tensor = torch.arange(3.0)
    tensor.me = tensor
    return tensor


def _tensors_referring_to_each_other() -> dict:
    first, second = torch.ones(1), torch.zeros(1)
    first.partner, second.partners = second, [first]
    return {"first": first, "second": second}


def _tuple_holding_itself() -> tuple:
    items: list = []
    outer = (items,)
    items.append(outer)
    return outer


def _parameter_with_attribute() -> torch.nn.Parameter:
    parameter = torch.nn.Parameter(torch.ones(2))
    parameter.note = {"tag": [1, 2]}
    return parameter


def _ordered_dict_with_metadata() -> collections.OrderedDict:
    state = collections.OrderedDict(w=torch.ones(2))
    state._metadata = {"": {"version": 2}}
    return state


def _shared_list() -> dict:
    items = [1, bytearray(b"x")]
    return {"a": items, "b": items}


def _storage_and_its_tensor() -> dict:
    tensor = torch.arange(4.0)
    return {"tensor": tensor, "storage": tensor.storage()}  # typed: an untyped one cannot be saved


def _self_referencing() -> dict:
    state: dict = {"weight": torch.ones(2)}
    state["self"] = state
    return state


def _shared_tensor() -> dict:
    tensor = torch.arange(4.0)
    return {"a": tensor, "b": tensor, "view": tensor[1:3]}


def _adam_with_numpy_lr() -> dict:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = optimizer.state_dict()
    state["param_groups"][0]["lr"] = np.float64(1e-3)  # what some LR schedules leave there
    return state


Factory = Callable[[], Any]


def _entry(label: str, make: Factory, beta: bool = False) -> Any:
    """One catalogue entry; ``beta``: torch warns that the type is beta or deprecated."""
    marks = [pytest.mark.filterwarnings("ignore::UserWarning")] if beta else []
    return pytest.param(make, id=label, marks=marks)


LOADABLE_VALUES = [
    _entry("int", lambda: 7),
    _entry("big int", lambda: 2**100),
    _entry("float", lambda: 0.1),
    _entry("nan", lambda: math.nan),
    _entry("inf", lambda: -math.inf),
    _entry("bool", lambda: True),
    _entry("None", lambda: None),
    _entry("str", lambda: "ünïcødé ✓"),
    _entry("bytes", lambda: b"\x00\xff"),
    _entry("bytearray", lambda: bytearray(b"ab")),
    _entry("complex", lambda: 1 + 2j),
    _entry("list", lambda: [1, "a", None]),
    _entry("tuple", lambda: (1, 2.5)),
    _entry("set", lambda: {1, 2}),
    _entry("set of a tuple and an int", lambda: {(1, 2), 3}),  # their hashes collide: order matters
    _entry("dict with int keys", lambda: {0: {"step": 3}}),
    _entry("tuple key", lambda: {(1, "a"): 2}),
    _entry("OrderedDict", lambda: collections.OrderedDict(b=1, a=2)),
    _entry("OrderedDict with metadata", _ordered_dict_with_metadata),
    _entry("tensor key", lambda: {torch.arange(2.0): "a"}),
    _entry("container referenced twice", _shared_list),
    _entry("Counter", lambda: collections.Counter(a=2)),
    _entry("tensor", lambda: torch.arange(6.0).reshape(2, 3)),
    _entry("0-d tensor", lambda: torch.tensor(3.5)),
    _entry("empty tensor", lambda: torch.empty(0, 4)),
    _entry("non-contiguous tensor", lambda: torch.arange(6.0).reshape(2, 3).t()),
    _entry("bfloat16 tensor", lambda: torch.arange(4.0, dtype=torch.bfloat16)),
    _entry("float8 tensor", lambda: torch.arange(4.0).to(torch.float8_e4m3fn)),
    _entry("complex tensor", lambda: torch.ones(2, dtype=torch.complex64)),
    _entry("bool tensor", lambda: torch.tensor([True, False])),
    _entry("uint16 tensor", lambda: torch.tensor([1, 65535], dtype=torch.uint16)),
    _entry("sparse COO tensor", lambda: torch.eye(3).to_sparse()),
    _entry("uncoalesced sparse COO tensor", lambda: torch.sparse_coo_tensor([[0, 0]], [1.0, 2.0], (3,)), beta=True),
    _entry("sparse CSR tensor", lambda: torch.eye(3).to_sparse_csr(), beta=True),
    _entry("sparse BSC tensor", lambda: torch.eye(4).to_sparse_bsc((2, 2)), beta=True),
    _entry("quantized tensor", lambda: torch.quantize_per_tensor(torch.arange(4.0), 0.5, 0, torch.quint8), beta=True),
    _entry("per-channel quantized tensor", lambda: torch.quantize_per_channel(
        torch.arange(4.0).reshape(2, 2), torch.tensor([0.5, 0.25]), torch.tensor([0, 1]), 0, torch.quint8
    ), beta=True),
    _entry("nested tensor", lambda: torch.nested.nested_tensor([torch.ones(2), torch.arange(3.0)]), beta=True),
    _entry("meta tensor", lambda: torch.empty(2, 3, device="meta")),
    _entry("lazy conjugate", lambda: torch.tensor([1 + 2j, 3 - 1j]).conj()),
    _entry("lazy negation", lambda: torch._neg_view(torch.arange(3.0))),
    _entry("tensor requiring grad", lambda: torch.ones(2, requires_grad=True)),
    _entry("non-leaf tensor", lambda: torch.ones(2, requires_grad=True) * 2),
    _entry("Parameter", lambda: torch.nn.Parameter(torch.ones(2))),
    _entry("frozen Parameter", lambda: torch.nn.Parameter(torch.ones(2), requires_grad=False)),
    _entry("tensor with an attribute", lambda: _with_attribute("a note")),
    _entry("tensor with a tensor attribute", lambda: _with_attribute(torch.ones(2))),
    _entry("Parameter with an attribute", _parameter_with_attribute),
    _entry("shared tensor and view", _shared_tensor),
    _entry("self-referencing dict", _self_referencing),
    _entry("torch.Size", lambda: torch.Size([2, 3])),
    _entry("torch.device", lambda: torch.device("cpu")),
    _entry("torch.dtype", lambda: torch.float16),
    _entry("torch.layout", lambda: torch.sparse_coo),
    _entry("torch.qscheme", lambda: torch.per_tensor_affine),
    _entry("RNG state", torch.get_rng_state),
    _entry("typed storage", lambda: torch.arange(3.0).storage()),
    _entry("untyped storage", lambda: torch.arange(3.0).untyped_storage()),
    _entry("typed storage and its tensor", _storage_and_its_tensor, beta=True),
]

REFUSED_VALUES = [
    _entry("numpy array", lambda: np.ones(3)),
    _entry("numpy float64", lambda: np.float64(0.5)),
    _entry("numpy float32", lambda: np.float32(0.5)),
    _entry("numpy int64", lambda: np.int64(3)),
    _entry("numpy bool", lambda: np.bool_(True)),
    _entry("numpy str", lambda: np.str_("a")),
    _entry("numpy int key", lambda: {np.int64(0): 1}),
    _entry("numpy lr in Adam param_groups", _adam_with_numpy_lr),
    _entry("numpy value in a tuple key", lambda: {(1, np.int8(2)): 1}),
    _entry("numpy value in a set", lambda: {np.float32(1.0)}),
    _entry("numpy tensor attribute", lambda: _with_attribute(np.float64(1.0))),
    _entry("nn.Module", lambda: torch.nn.Linear(2, 2)),
    _entry("tensor subclass", lambda: torch.ones(2).as_subclass(_TaggedTensor)),
    _entry("custom object", _Plain),
    _entry("dict subclass", lambda: _Settings(a=1)),
    _entry("defaultdict", lambda: collections.defaultdict(int, a=1)),
    _entry("deque", lambda: collections.deque([1, 2])),
    _entry("namedtuple", lambda: _Pair(1, 2)),
    _entry("tuple subclass", lambda: _Point((1, 2))),
    _entry("frozenset", lambda: frozenset({1})),
    _entry("Enum", lambda: _Colour.RED),
    _entry("IntEnum", lambda: _Level.HIGH),
    _entry("Decimal", lambda: decimal.Decimal("0.1")),
    _entry("Fraction", lambda: fractions.Fraction(1, 3)),
    _entry("datetime", lambda: datetime.datetime(2024, 1, 1)),
    _entry("Path", lambda: pathlib.Path("/tmp")),
    _entry("UUID", lambda: uuid.UUID(int=1)),
    _entry("array.array", lambda: array.array("i", [1])),
    _entry("range", lambda: range(3)),
    _entry("slice", lambda: slice(1, 2)),
    _entry("Ellipsis", lambda: ...),
    _entry("function", lambda: len),
    _entry("class", lambda: int),
    _entry("optimizer class", lambda: torch.optim.Adam),
    _entry("torch.memory_format", lambda: torch.channels_last),
    _entry("tensor whose attribute is itself", _tensor_referring_to_itself),
    _entry("tensors whose attributes refer to each other", _tensors_referring_to_each_other),
    _entry("tuple that holds itself through a list", _tuple_holding_itself),
]


def assert_loaded_equal(actual: Any, expected: Any) -> None:
    """Compare a value loaded back with the value stored: tensors exactly (by layout: sparse,
    quantized, nested and meta tensors too, their lazy conjugate and negation bits, and their
    attributes), storages by their bytes, NaN equal to NaN, containers item by item (keys too)
    and of the same type (an ``OrderedDict``'s attributes too), and sharing: an object met
    twice in ``expected`` (a tensor, a container, a bytearray) is one object in ``actual`` too,
    and different ones are different; a self-referencing container is compared once."""
    _compare(actual, expected, {}, set())


_SHARED_KINDS = (torch.Tensor, dict, list, tuple, set, bytearray)
"""Values that ``torch.save`` stores once however often they are met (pickle's memo)."""


def _compare(actual: Any, expected: Any, seen: dict[int, Any], images: set[int]) -> None:
    if isinstance(expected, (torch.UntypedStorage, torch.TypedStorage)):  # loads back typed
        assert isinstance(actual, torch.TypedStorage) and _storage_bytes(actual) == _storage_bytes(expected)
        return
    assert type(actual) is type(expected), f"{type(actual).__name__} != {type(expected).__name__}"
    if isinstance(expected, _SHARED_KINDS) and expected != ():  # the one empty tuple is everywhere
        if id(expected) in seen:
            assert seen[id(expected)] is actual, "an object met twice was loaded as two objects"
            return
        assert id(actual) not in images, "two objects were loaded as one"
        seen[id(expected)] = actual
        images.add(id(actual))
    if isinstance(expected, torch.Tensor):
        _compare_tensors(actual, expected)
        assert vars(actual).keys() == vars(expected).keys()
        for name, item in vars(expected).items():
            _compare(getattr(actual, name), item, seen, images)
    elif isinstance(expected, dict):
        assert len(actual) == len(expected)
        for (key, item), (expected_key, expected_item) in zip(actual.items(), expected.items()):
            _compare(key, expected_key, seen, images)
            _compare(item, expected_item, seen, images)
        if hasattr(expected, "__dict__"):  # an OrderedDict's _metadata
            _compare(vars(actual), vars(expected), seen, images)
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            _compare(a, e, seen, images)
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual)
    else:
        assert actual == expected


def _storage_bytes(storage: Any) -> bytes:
    untyped = storage.untyped() if isinstance(storage, torch.TypedStorage) else storage
    return bytes(untyped.tolist())


def _compare_tensors(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert (actual.dtype, actual.layout, actual.is_nested) == (expected.dtype, expected.layout, expected.is_nested)
    assert actual.requires_grad == expected.requires_grad
    if expected.is_nested:
        assert len(actual.unbind()) == len(expected.unbind())
        for a, e in zip(actual.unbind(), expected.unbind()):
            _compare_tensors(a, e)
        return
    assert actual.shape == expected.shape
    if expected.device.type == "meta":
        assert actual.device.type == "meta"
    elif expected.is_quantized:
        assert actual.qscheme() == expected.qscheme()
        if expected.qscheme() == torch.per_tensor_affine:
            assert actual.q_scale() == expected.q_scale() and actual.q_zero_point() == expected.q_zero_point()
        else:
            assert actual.q_per_channel_axis() == expected.q_per_channel_axis()
            assert torch.equal(actual.q_per_channel_scales(), expected.q_per_channel_scales())
            assert torch.equal(actual.q_per_channel_zero_points(), expected.q_per_channel_zero_points())
        assert torch.equal(actual.int_repr(), expected.int_repr())
    elif expected.layout == torch.sparse_coo:  # uncoalesced: the same entries, not just their sums
        assert actual.is_coalesced() == expected.is_coalesced()
        assert torch.equal(actual._indices(), expected._indices()) and torch.equal(actual._values(), expected._values())
    elif expected.layout != torch.strided:
        assert torch.equal(actual.to_dense(), expected.to_dense())
    elif expected.dtype.is_floating_point and expected.element_size() == 1:  # float8: compare the bits
        assert torch.equal(actual.view(torch.uint8), expected.view(torch.uint8))
    else:
        assert (actual.is_conj(), actual.is_neg()) == (expected.is_conj(), expected.is_neg())
        assert torch.equal(actual, expected)


def torch_archive(state: Any = None, deflated: bool = False, **changes: bytes | None) -> bytes:
    """A ``torch.save`` archive of ``state`` (default: a small state dict), with the records
    named in ``changes`` (by the end of their name) replaced, or removed where the value is
    ``None``; every record compressed if ``deflated`` (``torch.save`` never compresses, and
    torch still reads such an archive: a small file can expand without bound)."""
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(1000)} if state is None else state, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        records = {name: archive.read(name) for name in archive.namelist()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED) as archive:
        for name, data in records.items():
            key = name.rsplit("/", 1)[-1]
            if key in changes and changes[key] is None:
                continue
            archive.writestr(name, changes.get(key, data))
    return out.getvalue()


def _foreign_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    return out.getvalue()


def _legacy_torch_file() -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.ones(2)}, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def flat_payload(header: Any, data: bytes = b"") -> bytes:
    """A flat payload (see ``dacapo_store.flat_format``) of the JSON ``header`` and ``data``."""
    encoded = json.dumps(header).encode()
    prefix = struct.pack("<8sQ", MAGIC, len(encoded)) + encoded
    return prefix + bytes(-len(prefix) % ALIGNMENT) + data


def safetensors_payload(header: Any, data: bytes = b"", structure: Any = None) -> bytes:
    """A payload in the safetensors layout (see ``dacapo_store.safetensors_layout``): the JSON
    ``header`` (with ``structure``, if given, as its dacapo-store metadata), padded to 64 bytes,
    then ``data``."""
    if structure is not None:
        header = {"__metadata__": {"format": "pt", "dacapo_store": json.dumps(structure)}, **header}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-(8 + len(encoded)) % 64)
    return struct.pack("<Q", len(encoded)) + encoded + data


def safetensors_entries(**changes: Any) -> dict[str, Any]:
    """The entries of a payload of one float32 tensor ``w`` of 4 elements, ``changes`` to its entry."""
    return {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], **changes}}


def safetensors_structure(**changes: Any) -> dict[str, Any]:
    """The dacapo-store structure of :func:`safetensors_entries`, with ``changes``."""
    structure = {
        "version": 1,
        "storages": [["w", "cpu"]],
        "tensors": [[0, "float32", [4], [1], 0, False, False]],
        "root": {"d": ["w", {"t": 0}]},
    }
    return {**structure, **changes}


def flat_header(**changes: Any) -> dict[str, Any]:
    """The header of a flat payload of one float32 tensor ``w`` of 4 elements, with ``changes``."""
    header = {
        "version": 1,
        "storages": [[0, 16, "cpu"]],
        "tensors": [[0, "float32", [4], [1], 0, False, False]],
        "root": {"d": ["w", {"t": 0}]},
    }
    return {**header, **changes}


FOREIGN_PAYLOADS = [
    pytest.param(lambda: b"", id="empty"),
    pytest.param(lambda: b"\x00garbage" * 100, id="garbage"),
    pytest.param(lambda: pickle.dumps({"weight": [1.0]}), id="plain pickle"),
    pytest.param(lambda: pickle.dumps(12345), id="pickled int"),
    pytest.param(_legacy_torch_file, id="pre-zip torch file"),
    pytest.param(_foreign_zip, id="foreign zip"),
    pytest.param(lambda: torch_archive(**{"data.pkl": b"garbage"}), id="garbage pickle in archive"),
    pytest.param(lambda: torch_archive(version=None), id="archive without version"),
    pytest.param(lambda: torch_archive(byteorder=b"middle"), id="archive with bad byteorder"),
    pytest.param(lambda: torch_archive(**{"0": b"short"}), id="archive with short tensor data"),
    pytest.param(lambda: flat_payload(flat_header())[:-4], id="flat payload cut in its header"),
    pytest.param(
        lambda: safetensors_payload(safetensors_entries(), bytes(16), safetensors_structure())[:-4],
        id="safetensors payload cut in its data",
    ),
    pytest.param(
        lambda: safetensors_payload(safetensors_entries(), bytes(16), safetensors_structure(root={"x": 1})),
        id="safetensors payload with an unknown tag",
    ),
    pytest.param(
        lambda: safetensors_payload(safetensors_entries(data_offsets=[0, 12]), bytes(12)),
        id="safetensors entry shorter than its shape",
    ),
    pytest.param(
        lambda: safetensors_payload(
            safetensors_entries(),
            bytes(16),
            safetensors_structure(tensors=[[0, "float32", [5], [1], 0, False, False]]),
        ),
        id="safetensors payload with a tensor past its storage",
    ),
    pytest.param(lambda: flat_payload(flat_header(root={"x": 1}), bytes(16)), id="flat payload with an unknown tag"),
    pytest.param(
        lambda: flat_payload(flat_header(storages=[[0, 64, "cpu"]]), bytes(16)), id="flat payload with a short storage"
    ),
    pytest.param(
        lambda: flat_payload(flat_header(tensors=[[0, "float32", [5], [1], 0, False, False]]), bytes(16)),
        id="flat payload with a tensor past its storage",
    ),
]
"""Payloads that are neither what ``torch.save`` writes for a state dict nor a valid flat payload:
a store that finds one
(planted with a matching digest) must report it as corrupt, and ``import`` must refuse it."""
