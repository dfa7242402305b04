"""Reading payload files of the local store back, verified.

A payload file is hashed through a memory map first (XXH3 runs several times faster than the
page cache can be copied), then ``torch.load(mmap=True)`` maps the verified file: tensors are
views of its pages, so a load copies the payload once, into the model, where a plain
``torch.load`` copies it twice (into new tensors, then into the model). Verifying first and
copying once makes a verified load as fast as an unverified one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ..digests import file_digest
from ..errors import CorruptCheckpointError
from ..records import PartInfo
from ..serialization import check_payload, check_size, fd_path, load_state, verifying_algorithm


@contextmanager
def _open_verified(path: Path, expected: PartInfo, describe: str) -> Iterator[BinaryIO]:
    """Open the payload file at ``path`` and yield it once its size and digest (hashed through
    a memory map) match ``expected``.

    Raises:
        CorruptCheckpointError: the file is missing, has the wrong size or the wrong digest.
    """
    algorithm = verifying_algorithm(expected, describe)
    try:
        file = open(path, "rb")
    except FileNotFoundError as error:
        raise CorruptCheckpointError(f"{describe}: payload file {path} is missing") from error
    with file:
        size = os.fstat(file.fileno()).st_size
        check_size(size, expected, describe)
        check_payload(size, file_digest(file.fileno(), size, algorithm), expected, describe)
        yield file


def verify_payload_file(path: Path, expected: PartInfo, describe: str) -> None:
    """Check the payload file at ``path`` against the recorded size and digest.

    Raises:
        CorruptCheckpointError: the file is missing, has the wrong size or the wrong digest.
    """
    with _open_verified(path, expected, describe):
        pass


def load_payload_file(path: Path, expected: PartInfo, map_location: Any, describe: str) -> Any:
    """Verify the payload file at ``path``, then ``torch.load`` it memory-mapped.

    ``torch.load`` maps the very file that was verified (``/proc/self/fd/N``), not whatever the
    path names by then. The returned tensors are views of the file (copy-on-write) unless
    ``map_location`` moves them; they stay valid after the checkpoint is removed.

    Returns:
        The state dict.

    Raises:
        CorruptCheckpointError: the file is missing, corrupt, or not a plain state dict.
    """
    with _open_verified(path, expected, describe) as file:
        return load_state(fd_path(file.fileno(), path), map_location, describe, mmap=True)
