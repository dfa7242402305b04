"""Reading one GridFS file for ``torch.load``: one cursor, each chunk hashed once, in order.

``torch.load`` reads a payload's zip archive in a fixed pattern: the central directory at
the end first, then the records from the start onwards. :class:`ChunkReader` serves that
pattern from one cursor over the file's chunks (one query, then one ``getMore`` per 16 MiB
reply), copying straight from the chunk into the tensor that torch reads into. The chunks at
the end, when they lie beyond the kept chunks' budget, are fetched ahead with a query each and
kept until the cursor reaches them, where they must equal the cursor's copy. Every chunk the
cursor delivers goes to ``on_chunk`` exactly once and in order, so the payload's digest covers
every byte torch was given.

Kept chunks the read position has passed are dropped once they exceed ``READ_AHEAD_BYTES``, so
the reader holds at most about that, one reply batch and the chunks fetched ahead, never the
whole payload. A dropped chunk is never fetched again (the copy would be unverified): a read
that needs one fails with :class:`DroppedChunkError`, and a reader made with ``keep_all``
keeps every chunk instead. torch does not read that way; the store retries with ``keep_all``
if it ever does.
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable

from pymongo import ASCENDING

from ..errors import CorruptCheckpointError

READ_AHEAD_BYTES = 16 * 1024 * 1024
"""The budget of kept chunks. A read ahead of the cursor advances the cursor if every chunk up
to it fits the budget beside those kept; one further ahead (the archive's central directory,
read first) fetches its chunk on its own. Passed chunks are dropped beyond the budget."""


class DroppedChunkError(OSError):
    """A read needed a chunk the reader had already dropped (see the module doc)."""


class ChunkReader(io.RawIOBase):
    """A read-only, seekable file over the ``length`` bytes of GridFS file ``files_id``.

    Args:
        chunks: the bucket's chunks collection.
        files_id: the file's id.
        length: the file's length (from its files document).
        chunk_size: the file's chunk size (from its files document).
        on_chunk: called with every chunk's data, once each, in order.
        describe: names the payload in error messages.
        keep_all: keep every chunk read (memory up to the payload's size) instead of dropping
            passed ones.

    Reads raise CorruptCheckpointError for a missing, misplaced or wrongly sized chunk,
    DroppedChunkError for a read behind the kept chunks, and pymongo's errors as they come.
    After an error, every further read raises the same error (a cursor that failed once
    delivers nothing more, which must not pass for missing chunks).

    Raises:
        CorruptCheckpointError: ``length`` or ``chunk_size`` is impossible.
    """

    def __init__(
        self,
        chunks: Any,
        files_id: Any,
        length: int,
        chunk_size: int,
        on_chunk: Callable[[bytes], None],
        describe: str,
        keep_all: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(chunk_size, int) or not isinstance(length, int) or chunk_size <= 0 or length < 0:
            raise CorruptCheckpointError(f"{describe}: invalid GridFS file (length {length}, chunk size {chunk_size})")
        self._chunks = chunks
        self._files_id = files_id
        self._length = length
        self._chunk_size = chunk_size
        self._chunk_count = math.ceil(length / chunk_size)
        self._on_chunk = on_chunk
        self._describe = describe
        self._keep_all = keep_all
        self._position = 0
        self._cursor: Any = None
        self._next = 0
        """Index of the next chunk the cursor delivers; every chunk before it went to on_chunk."""
        self._window: dict[int, bytes] = {}
        """Chunks the cursor delivered and kept, by increasing index (see :meth:`_drop_passed`)."""
        self._window_bytes = 0
        self._ahead: dict[int, bytes] = {}
        """Chunks fetched on their own, ahead of the cursor, until the cursor delivers them."""
        self._error: BaseException | None = None

    # ---- the file interface torch.load uses ----------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}
        if whence not in bases:
            raise ValueError(f"invalid whence {whence!r}")
        if bases[whence] + offset < 0:
            raise ValueError(f"negative seek position {bases[whence] + offset}")
        self._position = bases[whence] + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        """Copy the bytes at the read position into ``buffer``; returns how many (0 at the end)."""
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self._length:
            index, offset = divmod(self._position, self._chunk_size)
            data = memoryview(self._sticky(self._chunk, index))
            count = min(len(view) - done, len(data) - offset)
            view[done : done + count] = data[offset : offset + count]
            done += count
            self._position += count
            self._drop_passed()
        return done

    def close(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
        self._window.clear()
        self._window_bytes = 0
        self._ahead.clear()
        super().close()

    # ---- the rest of the payload -----------------------------------------------------------

    def read_rest(self) -> int:
        """Run the cursor to the end, handing every remaining chunk to ``on_chunk``; returns
        the file's length once all its chunks were seen.

        Raises:
            CorruptCheckpointError: a chunk is missing, misplaced or wrongly sized, or the
                file has chunks beyond its length.
            the reader's earlier error, if a read failed.
        """
        self._checkClosed()
        while self._next < self._chunk_count:
            self._sticky(self._advance, False)
        return self._sticky(self._check_no_more_chunks)

    # ---- chunks ---------------------------------------------------------------------------

    def _sticky(self, action: Callable[..., Any], *arguments: Any) -> Any:
        """Run ``action``, unless an earlier action failed: then raise that error again."""
        if self._error is not None:
            raise self._error
        try:
            return action(*arguments)
        except BaseException as error:
            self._error = error
            raise

    def _chunk(self, index: int) -> bytes:
        """The data of chunk ``index``: kept, fetched ahead, or from the cursor (the next chunk,
        or one further on if every chunk up to it fits the kept ones' budget: a jump never
        pushes out chunks still to be read), else fetched ahead now."""
        if index in self._window:
            return self._window[index]
        if index in self._ahead:
            return self._ahead[index]
        if index < self._next:
            raise DroppedChunkError(
                f"{self._describe}: a read went back to GridFS chunk n={index}, which was dropped"
            )
        if index == self._next or self._window_bytes + (index - self._next + 1) * self._chunk_size <= READ_AHEAD_BYTES:
            while self._next <= index:
                self._advance(True)
            return self._window[index]
        self._ahead[index] = self._fetch(index)
        return self._ahead[index]

    def _advance(self, keep: bool) -> None:
        """Take the next chunk from the cursor, check it, and hand it to ``on_chunk``."""
        document = self._next_document()
        index = self._next
        if document is None or document.get("n") != index:
            found = "no further chunk" if document is None else f"chunk n={document.get('n')}"
            raise CorruptCheckpointError(f"{self._describe}: its GridFS chunk n={index} is missing ({found})")
        data = self._checked(index, document)
        fetched_ahead = self._ahead.pop(index, None)
        if fetched_ahead is not None and fetched_ahead != data:
            raise CorruptCheckpointError(f"{self._describe}: its GridFS chunk n={index} changed while it was read")
        self._on_chunk(data)
        self._next += 1
        if keep or fetched_ahead is not None:
            self._window[index] = data
            self._window_bytes += len(data)

    def _check_no_more_chunks(self) -> int:
        extra = self._next_document()
        if extra is not None:
            raise CorruptCheckpointError(
                f"{self._describe}: its GridFS file has a chunk n={extra.get('n')} beyond its {self._length} bytes"
            )
        return self._length

    def _next_document(self) -> Any:
        """The cursor's next chunk document (``None`` at its end), opening it on first use."""
        if self._cursor is None:
            self._open_cursor()
        return next(self._cursor, None)

    def _open_cursor(self) -> None:
        self._cursor = self._chunks.find({"files_id": self._files_id}, sort=[("n", ASCENDING)])

    def _fetch(self, index: int) -> bytes:
        """Fetch chunk ``index`` on its own (one query)."""
        document = self._chunks.find_one({"files_id": self._files_id, "n": index})
        if document is None:
            raise CorruptCheckpointError(f"{self._describe}: its GridFS chunk n={index} is missing")
        return self._checked(index, document)

    def _checked(self, index: int, document: Any) -> bytes:
        """The data of chunk ``index``'s ``document``, if it has the size the file's length implies."""
        data = document.get("data")
        expected = min(self._chunk_size, self._length - index * self._chunk_size)
        if not isinstance(data, bytes):
            raise CorruptCheckpointError(
                f"{self._describe}: its GridFS chunk n={index} holds {type(data).__name__}, not bytes"
            )
        if len(data) != expected:
            raise CorruptCheckpointError(
                f"{self._describe}: its GridFS chunk n={index} has {len(data)} bytes, expected {expected}"
            )
        return data

    def _drop_passed(self) -> None:
        """Keep the passed chunks within ``READ_AHEAD_BYTES`` (unless ``keep_all``): drop the
        oldest, as long as they lie before the chunk just before the read position (torch
        reads a record's header just before its data)."""
        if self._keep_all:
            return
        current = self._position // self._chunk_size
        while self._window_bytes > READ_AHEAD_BYTES:
            oldest = next(iter(self._window))
            if oldest >= current - 1:
                return
            self._window_bytes -= len(self._window.pop(oldest))
