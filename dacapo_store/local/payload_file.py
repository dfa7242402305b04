"""Reading payload files of the local store back, verified.

By default a payload is read once into private memory of this process
(:func:`~dacapo_store.payload_memory.payload_memory`, fresh memory
never reused by another load), by several threads for a large payload, each piece
hashed in order right after it lands, while it is still in a CPU cache; only once the whole
payload matches its recorded size and digest does ``torch`` parse it, from that memory,
building the tensors as views of it
(:func:`~dacapo_store.serialization.load_state_from_memory`). The bytes are copied once, as by
a plain ``torch.load``; what torch parses is exactly what was verified, and the tensors are the
caller's alone: a payload file overwritten, truncated or removed later changes nothing.

``mmap=True`` (:func:`load_payload_file`) maps the verified file instead (zero copy; see there
for the trade-off).
"""

from __future__ import annotations

import mmap as mmap_module
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .. import helper_threads
from ..digests import file_digest, format_digest, new_hash
from ..errors import CorruptCheckpointError
from ..payload_memory import payload_memory
from ..records import PartInfo
from ..serialization import (
    check_payload,
    check_size,
    fd_path,
    load_state,
    load_state_from_memory,
    verifying_algorithm,
)

READ_CHUNK_BYTES = 1024 * 1024
"""Bytes read (and then hashed, while still in the CPU cache) at a time by one thread."""
PARALLEL_READ_BYTES = 16 * 1024 * 1024
"""Payloads at least this large are read by several threads (:class:`_SharedRead`)."""
PIECE_BYTES = 4 * 1024 * 1024
"""What one thread of a shared read reads at a time."""


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
    """Read the ``expected.size`` bytes of ``file`` into private memory, hashing each piece in
    order as soon as it has landed; return the memory once size and digest match.

    A payload of at least :data:`PARALLEL_READ_BYTES` that the page cache holds is read by
    several threads at once (:class:`_SharedRead`), else by the calling thread alone: from the
    disk, one sequential reader is faster (see :func:`_cached`).

    Raises:
        CorruptCheckpointError: the file ends early (truncated meanwhile), or the digest differs.
        OSError: reading the file failed.
    """
    algorithm = verifying_algorithm(expected, describe)
    hash_object = new_hash(algorithm)
    memory = payload_memory(expected.size)
    view = memoryview(memory)
    try:
        threads = helper_threads.thread_count()
        if threads > 1 and expected.size >= PARALLEL_READ_BYTES and hasattr(os, "preadv") and _cached(file.fileno(), expected.size):
            _SharedRead(file.fileno(), view, hash_object, expected, describe).run(threads - 1)
        else:
            _read_in_turn(file, view, hash_object, expected, describe)
    finally:
        view.release()
    check_payload(expected.size, format_digest(algorithm, hash_object), expected, describe)
    return memory


def _cached(fd: int, size: int) -> bool:
    """Whether the last byte of the file (``size`` bytes) is in the page cache: a read of it
    with ``RWF_NOWAIT`` would not wait for the disk. ``True`` where that cannot be asked.

    Threads pay only from the page cache: 300 MB read and hashed into fresh memory by two
    threads took 38 ms instead of 47 warm, but 140 ms instead of 122 from the disk (medians of
    11 interleaved rounds, two cores, a virtio disk). The last byte is asked because the whole
    file's read-ahead was just requested from the start (:func:`_open_payload`).
    """
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None or size == 0:
        return True
    try:
        os.preadv(fd, [bytearray(1)], size - 1, nowait)
    except BlockingIOError:
        return False
    except OSError:  # a file system that cannot answer (EOPNOTSUPP)
        return True
    return True


def _read_in_turn(file: BinaryIO, view: memoryview, hash_object: Any, expected: PartInfo, describe: str) -> None:
    """Fill ``view`` from ``file`` on the calling thread, hashing each piece right after it lands."""
    done = 0
    while done < expected.size:
        piece = view[done : min(done + READ_CHUNK_BYTES, expected.size)]
        count = file.readinto(piece)
        if not count:
            check_size(done, expected, describe)  # raises: the file ended early
        hash_object.update(piece[:count])
        done += count


class _SharedRead:
    """One payload read by the calling thread and helper threads together, ``os.preadv`` of
    :data:`PIECE_BYTES` pieces taken in file order (the GIL is released while the kernel copies),
    and hashed in order: the thread that completes the next piece to hash takes the turn to hash
    it, and every later piece that has landed, so most pieces are hashed by the thread that just
    read them, from its cache.

    One core copies from the page cache (and faults in fresh pages) below the memory's
    bandwidth: measured on two cores, 300 MB were read and hashed into fresh memory in 38 ms
    instead of 47 from the page cache. From the disk it cost more than it gained on the VM of
    ``docs/performance.md`` (140 ms instead of 122), so it is used only for cached files
    (:func:`_cached`).
    """

    def __init__(self, fd: int, view: memoryview, hash_object: Any, expected: PartInfo, describe: str) -> None:
        self._fd = fd
        self._view = view
        self._hash = hash_object
        self._expected = expected
        self._describe = describe
        self._pieces = -(-expected.size // PIECE_BYTES)
        self._landed = [False] * self._pieces
        self._next_to_read = 0
        self._next_to_hash = 0
        self._hashing = False  # whether a thread has the turn to hash
        self._failed = False
        self._lock = threading.Lock()

    def run(self, helpers: int) -> None:
        """Read and hash the whole payload, with ``helpers`` helper threads started for this read
        (:func:`~dacapo_store.helper_threads.run_together`; the calling thread reads all that
        is left anyway). A thread that fails, or Ctrl-C, makes the others stop at their next piece.

        Raises:
            an interrupt, else the calling thread's error, else the error of a helper; whichever
            it is, every helper has stopped by then.
        """
        helper_threads.run_together([self._read_pieces] * (helpers + 1), on_interrupt=self._fail)

    def _read_pieces(self) -> None:
        """Read pieces nobody took yet, hashing in turn, until none is left or a thread failed."""
        try:
            while (index := self._take()) is not None:
                self._read(index)
                self._hash_landed(index)
        except BaseException:
            self._fail()
            raise

    def _fail(self) -> None:
        """Make every thread stop at its next piece."""
        with self._lock:
            self._failed = True

    def _take(self) -> int | None:
        with self._lock:
            if self._failed or self._next_to_read == self._pieces:
                return None
            self._next_to_read += 1
            return self._next_to_read - 1

    def _read(self, index: int) -> None:
        """Read piece ``index`` whole.

        Raises:
            CorruptCheckpointError: the file ends before the piece does.
            OSError: the read failed.
        """
        piece = self._piece(index)
        start = done = index * PIECE_BYTES
        while done < start + len(piece):
            count = os.preadv(self._fd, [piece[done - start :]], done)
            if not count:  # the file ended early: raises, naming its size (this piece may lie past it)
                check_size(min(done, os.fstat(self._fd).st_size), self._expected, self._describe)
            done += count

    def _hash_landed(self, index: int) -> None:
        """Note that piece ``index`` landed; unless another thread has the turn, hash every
        landed piece that is next in order."""
        with self._lock:
            self._landed[index] = True
            if self._hashing:
                return  # that thread sees this piece before it gives up the turn
            self._hashing = True
        while True:
            with self._lock:
                following = self._next_to_hash
                if self._failed or following == self._pieces or not self._landed[following]:
                    self._hashing = False
                    return
            self._hash.update(self._piece(following))
            with self._lock:
                self._next_to_hash += 1

    def _piece(self, index: int) -> memoryview:
        return self._view[index * PIECE_BYTES : min((index + 1) * PIECE_BYTES, self._expected.size)]


def map_payload_file(path: Path, expected: PartInfo, describe: str) -> Any:
    """Load the payload file at ``path`` on the CPU as views of a private read-only-in-practice
    mapping of it, verified first by hashing the mapping: the bytes are read from the page cache
    once to hash and once more when copied out, never copied into memory of this process first.
    For a caller that copies the tensors out at once and drops them
    (:meth:`~dacapo_store.weights_store.WeightsStore.load_weights`): the tensors show any later
    change to the file, and a file truncated while they live kills the process with ``SIGBUS``
    (the store never changes a payload file in place: it writes ``.partial`` files and renames them).

    Returns:
        The state dict.

    Raises:
        CorruptCheckpointError: the file is missing, corrupt, or not a plain state dict.
    """
    algorithm = verifying_algorithm(expected, describe)
    with _open_payload(path, expected, describe) as file:
        if expected.size == 0:
            memory: Any = bytearray()
        else:  # copy-on-write: torch.frombuffer wants writable memory; nothing writes to it
            memory = mmap_module.mmap(file.fileno(), expected.size, access=mmap_module.ACCESS_COPY)
    hash_object = new_hash(algorithm)
    hash_object.update(memory)
    check_payload(expected.size, format_digest(algorithm, hash_object), expected, describe)
    return load_state_from_memory(memory, "cpu", describe)


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
