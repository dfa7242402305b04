"""Reading one GridFS file: its chunks in order, from one cursor, each checked.

A payload is read front to back from one cursor over its chunks (one query, then one
``getMore`` per 16 MiB reply), each chunk checked for its place and size as it arrives. The
store copies every chunk into the payload's private memory and hashes it there; only once the
whole payload matches its recorded size and digest does torch parse it, building the tensors as
views of that memory (:func:`~dacapo_store.serialization.load_state_from_memory`). Each byte is
copied once (from the reply into place), what torch parses is exactly what was verified, and
the reader holds the payload plus at most one reply batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from pymongo import ASCENDING

from ..errors import CorruptCheckpointError


def checked_chunks(chunks: Any, files_id: Any, length: int, chunk_size: int, describe: str) -> Iterator[bytes]:
    """The data of every chunk of GridFS file ``files_id``, in order, from one cursor.

    Args:
        chunks: the bucket's chunks collection.
        files_id: the file's id.
        length: the file's length (from its files document).
        chunk_size: the file's chunk size (from its files document).
        describe: names the payload in error messages.

    Raises:
        CorruptCheckpointError: ``length`` or ``chunk_size`` is impossible; a chunk is missing,
            misplaced, wrongly sized or not bytes; or the file has chunks beyond its length.
        pymongo's errors as they come (a lost connection is not corruption).
    """
    if not isinstance(chunk_size, int) or not isinstance(length, int) or chunk_size <= 0 or length < 0:
        raise CorruptCheckpointError(f"{describe}: invalid GridFS file (length {length}, chunk size {chunk_size})")
    cursor = chunks.find({"files_id": files_id}, sort=[("n", ASCENDING)])
    try:
        for index in range(math.ceil(length / chunk_size)):
            document = next(cursor, None)
            if document is None or document.get("n") != index:
                found = "no further chunk" if document is None else f"chunk n={document.get('n')}"
                raise CorruptCheckpointError(f"{describe}: its GridFS chunk n={index} is missing ({found})")
            yield _checked_data(document, index, min(chunk_size, length - index * chunk_size), describe)
        extra = next(cursor, None)
        if extra is not None:
            raise CorruptCheckpointError(
                f"{describe}: its GridFS file has a chunk n={extra.get('n')} beyond its {length} bytes"
            )
    finally:
        cursor.close()


def _checked_data(document: Any, index: int, expected: int, describe: str) -> bytes:
    """The data of chunk ``index``'s ``document``, if it is ``expected`` bytes long."""
    data = document.get("data")
    if not isinstance(data, bytes):
        raise CorruptCheckpointError(f"{describe}: its GridFS chunk n={index} holds {type(data).__name__}, not bytes")
    if len(data) != expected:
        raise CorruptCheckpointError(f"{describe}: its GridFS chunk n={index} has {len(data)} bytes, expected {expected}")
    return data
