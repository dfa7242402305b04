"""The legacy flat v1 payload: read only (dacapo-store 0.4 and 0.5 wrote it; new payloads use
the safetensors layout of :mod:`~dacapo_store.safetensors_layout`).

Layout of a payload::

    MAGIC (8 bytes) | header length (8 bytes, little-endian) | header (JSON, ASCII)
    | zero padding to ALIGNMENT | storage 0 | padding | storage 1 | ...

The data start (after the padding) and each storage are at multiples of :data:`ALIGNMENT`; a
storage's offset counts from the data start, and storages follow each other without overlap.
The header is ``{"version": 1, "storages": [[offset, nbytes, location], ...], "tensors": [...],
"root": value}``, the tensors and root as in :mod:`~dacapo_store.state_structure`.

A header is checked before anything it describes is made (see :func:`load`), so a damaged or
hostile payload raises an error, never a tensor reading bytes it does not own.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import torch

from .gc_pause import gc_paused
from .state_structure import build, build_tensor, parse_json

MAGIC = b"\x93DCSFLAT"
"""The first bytes of a flat payload (a ``torch.save`` archive starts with ``PK\\x03\\x04``)."""
VERSION = 1
ALIGNMENT = 64
"""Storages start at multiples of this many bytes."""
_PREFIX = struct.Struct("<8sQ")


def is_flat(head: bytes) -> bool:
    """Whether a payload starting with ``head`` (at least 8 bytes) is a flat payload."""
    return head[: len(MAGIC)] == MAGIC


def load(memory: Any, restore: Callable[[torch.UntypedStorage, str], torch.UntypedStorage] | None) -> Any:
    """Build the state dict of the flat payload in ``memory`` (a writable buffer the caller
    gives up: an ``mmap``, a ``bytearray`` or a memoryview of them; the CPU tensors are views of
    it and keep it alive).

    ``restore(storage, location)`` places each storage, as ``torch.load``'s ``map_location``
    callables do (it gets a CPU view of the bytes and the location tag written); ``None`` builds
    tensors on the meta device without reading any data.

    Every record is checked before it is used: the header's nesting (in linear time, before it
    is parsed), storages in order, aligned, without overlap, inside the payload; every tensor
    inside its storage, also where ``restore`` returns a copy that ``set_`` could grow.

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
    with gc_paused():
        header = parse_json(encoded)
        if type(header) is not dict or header.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} flat payload header")
        data_start = _PREFIX.size + header_size
        data_start += -data_start % ALIGNMENT
        records = _storage_records(header["storages"], len(view) - data_start)
        storages = _storages(records, memory, data_start, restore)
        sizes = [nbytes for _, nbytes, _ in records]
        tensors = [build_tensor(record, sizes, storages) for record in header["tensors"]]
        return build(header["root"], tensors)


def _storage_records(records: Any, data_bytes: int) -> list[tuple[int, int, str]]:
    """The header's storage records ``(offset, nbytes, location)``, checked: in order of offset,
    aligned, not overlapping, inside the ``data_bytes`` after the data start."""
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
