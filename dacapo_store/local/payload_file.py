"""Reading payload files of the local store back, verified.

By default a payload is read once into private memory of this process (anonymous memory, in
huge pages where the system offers them), each piece hashed right after it lands, while it is
still in the CPU cache; only once the whole payload matches its recorded size and digest does
``torch`` parse it, from that memory, building the tensors as views of it
(:func:`~dacapo_store.serialization.load_state_from_memory`). The bytes are copied once, as by
a plain ``torch.load``; what torch parses is exactly what was verified, and the tensors are the
caller's alone: a payload file overwritten, truncated or removed later changes nothing.

``mmap=True`` (:func:`load_payload_file`) maps the verified file instead (zero copy; see there
for the trade-off).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ..digests import file_digest, format_digest, new_hash
from ..errors import CorruptCheckpointError
from ..records import PartInfo
from ..serialization import (
    check_payload,
    check_size,
    fd_path,
    load_state,
    load_state_from_memory,
    private_memory,
    verifying_algorithm,
)

READ_CHUNK_BYTES = 1024 * 1024
"""Bytes read (and then hashed, while still in the CPU cache) at a time."""


@contextmanager
def _open_payload(path: Path, expected: PartInfo, describe: str) -> Iterator[BinaryIO]:
    """Open the payload file at ``path`` (unbuffered) once its size is the recorded size, and
    ask the kernel to read all of it ahead (what is not in the page cache yet arrives while the
    first pieces are hashed and copied).

    Raises:
        CorruptCheckpointError: the file is missing or has the wrong size.
    """
    try:
        file = open(path, "rb", buffering=0)
    except FileNotFoundError as error:
        raise CorruptCheckpointError(f"{describe}: payload file {path} is missing") from error
    with file:
        check_size(os.fstat(file.fileno()).st_size, expected, describe)
        if hasattr(os, "posix_fadvise"):  # the whole payload is read: from a cold cache, start now
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
        yield file


def verify_payload_file(path: Path, expected: PartInfo, describe: str) -> None:
    """Check the payload file at ``path`` against the recorded size and digest.

    Raises:
        CorruptCheckpointError: the file is missing, has the wrong size or the wrong digest.
    """
    algorithm = verifying_algorithm(expected, describe)
    with _open_payload(path, expected, describe) as file:
        check_payload(expected.size, file_digest(file.fileno(), expected.size, algorithm), expected, describe)


def _read_verified(file: BinaryIO, expected: PartInfo, describe: str) -> Any:
    """Read the ``expected.size`` bytes of ``file`` into private memory, hashing each piece as it
    lands; return the memory once size and digest match.

    Raises:
        CorruptCheckpointError: the file ends early (truncated meanwhile), or the digest differs.
    """
    algorithm = verifying_algorithm(expected, describe)
    hash_object = new_hash(algorithm)
    memory = private_memory(expected.size)
    view = memoryview(memory)
    try:
        done = 0
        while done < expected.size:
            piece = view[done : min(done + READ_CHUNK_BYTES, expected.size)]
            count = file.readinto(piece)
            if not count:
                check_size(done, expected, describe)  # raises: the file ended early
            hash_object.update(piece[:count])
            done += count
    finally:
        view.release()
    check_payload(done, format_digest(algorithm, hash_object), expected, describe)
    return memory


def load_payload_file(path: Path, expected: PartInfo, map_location: Any, describe: str, mmap: bool = False) -> Any:
    """Load the payload file at ``path``, verified against the recorded size and digest.

    By default the tensors live in private memory that only they use (see the module doc).
    With ``mmap=True`` the verified file is mapped instead: nothing is copied and pages are
    read only when touched, which suits read-only use (inference, inspecting a few tensors).
    The price: CPU tensors are copy-on-write views of the file, so the first write to each
    page copies it then (an optimizer step faults every page of its state), and they show any
    later change to the file's bytes, and a file truncated while they live kills the process
    with ``SIGBUS``. The store itself never changes a payload file once written (a remove
    unlinks it, which the mapping survives).

    Returns:
        The state dict.

    Raises:
        CorruptCheckpointError: the file is missing, corrupt, or not a plain state dict.
        RuntimeError and others: as ``torch.load`` for a valid payload it cannot place.
    """
    with _open_payload(path, expected, describe) as file:
        if not mmap:
            memory = _read_verified(file, expected, describe)
            return load_state_from_memory(memory, map_location, describe)
        algorithm = verifying_algorithm(expected, describe)
        check_payload(expected.size, file_digest(file.fileno(), expected.size, algorithm), expected, describe)
        # torch maps the very file that was checked (/proc/self/fd/N), not whatever the path names by now
        return load_state(fd_path(file.fileno(), path), map_location, describe, mmap=True)
