"""The MongoDB backend's payload store: one GridFS file per payload in the bucket
``<prefix>weights`` (see :mod:`dacapo_store.payload_store`).

A payload's location is its GridFS file id (an ObjectId's 24 hex digits). An upload sends its
chunks first and publishes the payload with its files document when it closes, so a reader
finds the whole payload or none; chunks whose files document does not exist (yet) are the
payload being written, listed as ``<id>.partial``. Writes use the store's write concern, so a
closed upload is as durable as the catalog commit that follows it.

Every method is one attempt: the weights store runs each under its retry policy
(:meth:`~dacapo_store.mongo.connection.MongoDatabase.read` and ``write``), and a retried
upload goes to a new location (:meth:`GridFSPayloads.new_location`).

Reads follow the URI's read preference; a payload that a secondary lacks (or holds damaged) is
read again from the primary, whose copy alone can prove a checkpoint corrupt.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import gridfs
from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, ReadPreference

from .._garbage import StoredPayload
from ..digests import format_digest, new_hash
from ..errors import CorruptCheckpointError
from ..payload_memory import payload_memory
from ..payload_store import PARTIAL_SUFFIX, PayloadStore, Write
from ..records import PartInfo
from ..serialization import check_payload, check_size, load_state_from_memory, verifying_algorithm
from .chunk_reader import checked_chunks
from .connection import MongoDatabase

logger = logging.getLogger(__name__)

T = TypeVar("T")

BUCKET_NAME = "weights"
CHUNK_SIZE_BYTES = 4 * 1024 * 1024 - 4096
"""GridFS chunk size of new uploads. Large chunks cut the per-chunk cost (one document, one
index entry each); just under 4 MiB, four chunk documents fill one 16 MiB reply batch, so a
load takes about ``ceil(size / 16 MiB) + 2`` queries on the chunks collection (the cursor's
batches, and one for the chunk at the end that ``torch.load`` reads first)."""

GRIDFS_INDEXES = (
    (
        f"{BUCKET_NAME}.files",
        (([("filename", ASCENDING), ("uploadDate", ASCENDING)], {"name": "filename_1_uploadDate_1"}),),
    ),
    (
        f"{BUCKET_NAME}.chunks",
        (([("files_id", ASCENDING), ("n", ASCENDING)], {"name": "files_id_1_n_1", "unique": True}),),
    ),
)
"""The indexes pymongo's GridFS creates on a bucket's first upload (only then: an index dropped
later stays missing), by collection. Every payload read queries the chunks by ``files_id``
sorted by ``n``: without ``files_id_1_n_1`` each read scans all chunks of every checkpoint."""


class _ViewReader:
    """A ``read(n)`` file over a memoryview: ``GridIn.write`` copies each chunk straight out of
    ``torch.save``'s buffer (it rejects memoryviews, and ``bytes(view)`` would copy it twice)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._position = 0

    def read(self, size: int) -> bytes:
        data = self._view[self._position : self._position + size].tobytes()
        self._position += len(data)
        return data


@dataclass(frozen=True)
class PayloadSource:
    """Where payloads are read: the bucket's files and chunks collections, each with the read
    preference to read them with."""

    files: Any
    chunks: Any

    @property
    def primary_only(self) -> bool:
        """Whether both collections are read from the primary only."""
        return all(_reads_primary(collection) for collection in (self.files, self.chunks))


def _reads_primary(collection: Any) -> bool:
    preference = getattr(collection, "read_preference", None)  # None: a client without them
    return preference is None or preference.mode == ReadPreference.PRIMARY.mode


def file_id_of(location: str, where: str | None = None) -> ObjectId:
    """The GridFS file id of the payload at ``location``.

    Raises:
        CorruptCheckpointError: ``location`` is no ObjectId (naming ``where``, if given).
    """
    try:
        return ObjectId(location)
    except (InvalidId, TypeError):
        prefix = "" if where is None else f"{where}: "
        raise CorruptCheckpointError(f"{prefix}the catalog records an invalid payload id {location!r}") from None


class GridFSPayloads(PayloadStore):
    """Payloads in the GridFS bucket ``<prefix>weights`` of ``database`` (uploads in chunks of
    ``chunk_size_bytes``).

    Attributes:
        bucket: the GridFS bucket that uploads go through.
        files, chunks: the bucket's collections, read where the URI's read preference sends reads.
        primary: the same collections read from the primary.
    """

    def __init__(self, database: MongoDatabase, chunk_size_bytes: int = CHUNK_SIZE_BYTES) -> None:
        self.database = database
        self.bucket = gridfs.GridFSBucket(
            database.db,
            database.collection_prefix + BUCKET_NAME,
            chunk_size_bytes=chunk_size_bytes,
            write_concern=database.write_concern,
        )
        self.files = database.collection(f"{BUCKET_NAME}.files")
        self.chunks = database.collection(f"{BUCKET_NAME}.chunks")
        self.preferred = PayloadSource(self.files, self.chunks)
        """The payloads read where the URI's read preference sends reads (maybe a secondary)."""
        self.primary = PayloadSource(database.primary(self.files), database.primary(self.chunks))
        """The payloads read from the primary: what the catalog (read there) lists is there."""

    @staticmethod
    def new_location() -> str:
        """A fresh location (GridFS file id) for one upload attempt."""
        return str(ObjectId())

    def write(
        self,
        location: str,
        produce: Callable[[Write], T],
        *,
        filename: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        unaborted: list[str] | None = None,
    ) -> T:
        """See :meth:`PayloadStore.write`; the GridFS file gets ``filename`` (default: the
        location) and ``metadata`` (garbage collection reads its ``token``). On failure the
        partial upload is aborted (its chunks deleted); if the abort fails too, ``location``
        is appended to ``unaborted`` (for the caller to delete later) and the original error
        is raised."""
        file_id = file_id_of(location)
        upload = self.bucket.open_upload_stream_with_id(
            file_id,
            filename if filename is not None else location,
            metadata=None if metadata is None else dict(metadata),
        )
        try:
            result = produce(lambda piece: upload.write(_ViewReader(memoryview(piece))))
            upload.close()
        except BaseException:
            try:
                upload.abort()
            except Exception as error:
                logger.warning("could not abort the partial upload %s (%s); it is deleted later", file_id, error)
                if unaborted is not None:
                    unaborted.append(location)
            raise
        return result

    def make_durable(self, locations: Iterable[str]) -> None:
        """Nothing to do: each upload was written with the store's write concern."""

    def read_into(self, location: str, memory: Any, where: str) -> None:
        """See :meth:`PayloadStore.read_into`; read like :meth:`load` (from the primary if the
        preferred copy is missing or of another size)."""
        file_id = file_id_of(location, where)
        with memoryview(memory) as view:
            size = len(view)

        def check_length(length: Any) -> None:
            if length != size:
                raise CorruptCheckpointError(f"{where}: its GridFS payload has {length} bytes, not {size}")

        self._read_following_the_catalog(lambda source: self._read(file_id, where, source, memory, check_length))

    def load(self, expected: PartInfo, map_location: Any, where: str, mmap: bool = False) -> Any:
        """Read the payload's chunks (one cursor) into private memory, hashing them there; once
        size and digest match, torch builds the tensors in that memory (see
        :mod:`~dacapo_store.mongo.chunk_reader`). ``mmap`` is ignored: there is no file to map.

        Raises:
            CorruptCheckpointError: the primary's copy is missing or damaged.
            pymongo's errors as they come (a lost connection is not corruption).
        """
        memory = payload_memory(expected.size)
        self._read_following_the_catalog(lambda source: self._read_checked(expected, where, memory, source))
        return load_state_from_memory(memory, map_location, where)

    def verify(self, expected: PartInfo, where: str) -> None:
        """Check the primary's copy (the one that every other copy replicates), hashing its
        chunks as they arrive.

        Raises:
            CorruptCheckpointError: missing or damaged.
        """
        self._read_checked(expected, where, None, self.primary)

    def delete(self, name: str) -> bool:
        """Delete the GridFS file ``name``: its files document first, then its chunks (GridFS's
        order: a failure in between leaves orphan chunks, never a file that lacks chunks). For
        ``<id>.partial``, delete the chunks of the upload ``<id>`` unless its files document
        exists (checked on the primary): it was published meanwhile.

        Raises:
            CorruptCheckpointError: ``name`` is not a GridFS file id (with or without the suffix).
        """
        if name.endswith(PARTIAL_SUFFIX):
            file_id = file_id_of(name[: -len(PARTIAL_SUFFIX)])
            if self.primary.files.find_one({"_id": file_id}, projection={"_id": True}) is not None:
                return False
            return self.chunks.delete_many({"files_id": file_id}).deleted_count > 0
        file_id = file_id_of(name)
        deleted = self.files.delete_one({"_id": file_id}).deleted_count
        return deleted + self.chunks.delete_many({"files_id": file_id}).deleted_count > 0

    def list(self) -> dict[str, int]:
        """Read from the primary (see :meth:`inventory`)."""
        published, unpublished = self.inventory(math.inf)
        return {
            **{payload.location: payload.size for payload in published},
            **{f"{location}{PARTIAL_SUFFIX}": size for location, size in unpublished.items()},
        }

    def inventory(self, cutoff: float) -> tuple[list[StoredPayload], dict[str, int]]:
        """From the primary (a lagging secondary would show live payloads as unreferenced, or
        chunks whose files document it lacks yet as orphans): every published payload with the
        ``token`` of its upload's metadata, and the location and size of each unpublished
        upload (chunks without a files document) whose newest chunk was written before
        ``cutoff`` (an upload in progress keeps writing chunks, each with a fresh ObjectId; a
        chunk id that is not an ObjectId has an unknown age and is kept). The files are read
        before the chunks: an upload that closes in between looks unpublished (see
        :meth:`delete` of ``<id>.partial``)."""
        files = {
            document["_id"]: document
            for document in self.primary.files.find({}, projection={"length": True, "metadata.token": True})
            if isinstance(document["_id"], ObjectId)
        }
        chunked = {fid for fid in self.primary.chunks.distinct("files_id") if isinstance(fid, ObjectId)}
        published = [
            StoredPayload(str(file_id), (document.get("metadata") or {}).get("token"), document.get("length", 0))
            for file_id, document in files.items()
        ]
        unpublished = {}
        for file_id in sorted(chunked - files.keys()):
            size, newest = 0, 0.0
            for chunk in self.primary.chunks.find({"files_id": file_id}, projection={"data": True}):
                size += len(chunk["data"])
                written = chunk["_id"]
                age = written.generation_time.timestamp() if isinstance(written, ObjectId) else math.inf
                newest = max(newest, age)
            if newest < cutoff:
                unpublished[str(file_id)] = size
        return published, unpublished

    def _read_following_the_catalog(self, read: Callable[[PayloadSource], None]) -> None:
        """``read`` where the URI's read preference sends reads; if that copy is missing or
        damaged and may be a secondary's, ``read`` again from the primary. The catalog entry
        was read from the primary, so a secondary that lags behind may not have its payload
        yet; only the primary's copy can prove a checkpoint corrupt. (Whatever a secondary
        returns is checked, so a secondary's copy that passes is the checkpoint.)

        Raises:
            CorruptCheckpointError: the primary's copy is missing or damaged.
        """
        if self.preferred.primary_only:
            read(self.primary)
            return
        try:
            read(self.preferred)
        except CorruptCheckpointError as error:
            logger.info("%s; reading it from the primary (the read preference chose a secondary)", error)
            read(self.primary)

    def _read_checked(self, expected: PartInfo, where: str, memory: Any, source: PayloadSource) -> None:
        """Read the payload ``expected`` from ``source`` (see :meth:`_read`) and check its size
        and digest against ``expected``.

        Raises:
            CorruptCheckpointError: an invalid digest or payload id, no files document, damaged
                chunks, or a size or digest other than the recorded one.
        """
        algorithm = verifying_algorithm(expected, where)
        file_id = file_id_of(expected.location, where)
        hash_object = new_hash(algorithm)
        position = self._read(
            file_id, where, source, memory, lambda length: check_size(length, expected, where), hash_object.update
        )
        check_payload(position, format_digest(algorithm, hash_object), expected, where)

    def _read(
        self,
        file_id: ObjectId,
        where: str,
        source: PayloadSource,
        memory: Any,
        check_length: Callable[[Any], None],
        consume: Callable[[bytes], object] | None = None,
    ) -> int:
        """Read the GridFS file ``file_id`` from ``source`` (one query for its files document,
        one cursor over its chunks), passing each chunk to ``consume`` and, unless ``memory``
        is ``None``, copying it into ``memory``; return the number of bytes read.

        Raises:
            CorruptCheckpointError: no files document, a length that ``check_length`` raises
                for, or damaged chunks.
            pymongo's errors as they come (a lost connection is not corruption).
        """
        document = source.files.find_one({"_id": file_id}, projection={"length": True, "chunkSize": True})
        if document is None:
            raise CorruptCheckpointError(f"{where}: its GridFS payload is missing")
        check_length(document.get("length"))
        with memoryview(memory if memory is not None else b"") as view:
            position = 0
            for data in checked_chunks(source.chunks, file_id, document["length"], document.get("chunkSize", 0), where):
                if memory is not None:
                    view[position : position + len(data)] = data
                if consume is not None:
                    consume(data)
                position += len(data)
        return position
