"""The MongoDB weights store: payloads in GridFS, a catalog collection with a unique key."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Callable

import gridfs
from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError
from pymongo.write_concern import WriteConcern

from ..checks import run_name_of
from ..errors import CheckpointExistsError, CorruptCheckpointError
from ..records import CheckpointInfo, PartInfo
from ..digests import format_digest, new_hash
from ..serialization import check_payload, check_size, load_verified, serialize_state, verifying_algorithm
from ..weights_store import (
    DEFAULT_STALE_AFTER,
    ORPHAN_CHUNKS,
    GarbageItem,
    Reservation,
    WeightsStore,
    PendingUpload,
    StoredPayload,
    classify_garbage,
    describe,
    reservation_lost,
)
from .chunk_reader import ChunkReader, DroppedChunkError
from .connection import MongoDatabase
from .retry import RetryPolicy
from .scores import SCORE_INDEXES, SCORES_COLLECTION, find_best_score

logger = logging.getLogger(__name__)

CHECKPOINTS_COLLECTION = "checkpoints"
BUCKET_NAME = "weights"
CHUNK_SIZE_BYTES = 4 * 1024 * 1024 - 4096
"""GridFS chunk size of new uploads. Large chunks cut the per-chunk cost (one document, one
index entry each); just under 4 MiB, four chunk documents fill one 16 MiB reply batch, so a
load takes about ``ceil(size / 16 MiB) + 2`` queries on the chunks collection (the cursor's
batches, and one for the chunk at the end that ``torch.load`` reads first)."""

CHECKPOINT_INDEXES = (
    ([("run", ASCENDING), ("iteration", ASCENDING)], {"name": "run_iteration", "unique": True}),
    (
        [("run", ASCENDING), ("state", ASCENDING), ("iteration", DESCENDING)],
        {"name": "run_state_iteration"},
    ),
)


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


def checkpoint_from_document(document: Mapping[str, Any]) -> CheckpointInfo:
    """Build the :class:`CheckpointInfo` of a complete catalog document."""
    return CheckpointInfo(
        run=document["run"],
        iteration=document["iteration"],
        created=document["created"],
        parts={name: PartInfo.from_document(part) for name, part in document["parts"].items()},
    )


class MongoWeightsStore(WeightsStore):
    """Checkpoints in GridFS (bucket ``weights``), catalogued in the ``checkpoints`` collection.

    The catalog's unique ``(run, iteration)`` index decides which writer wins before anything
    is uploaded; a checkpoint becomes visible only when its catalog document is marked complete
    with each part's size and digest. A :class:`MongoStatsStore` on the same database shares the
    validation scores that :meth:`retrieve_best` reads.

    Every operation retries transient errors (a failover, a lost connection) under ``retry``;
    each step of the write protocol is idempotent, so a retried step never duplicates or loses
    anything (see :mod:`dacapo_store.mongo.retry`).

    Args:
        db_host: a MongoDB URI or an existing client (pymongo or mongomock).
        db_name: the database (default: the URI's, else ``"dacapo"``).
        stale_after: seconds without progress after which a pending upload may be taken over.
        write_concern: default: the URI's, each unset field from ``w="majority", j=True``.
        chunk_size_bytes: GridFS chunk size of new uploads.
        read_only: open for reading only: indexes are checked, not created; writes raise
            ReadOnlyStoreError. Needs only MongoDB's ``read`` role.
        retry: the retry policy (default: a 60 s budget, or ``$DACAPO_STORE_RETRY_SECONDS``).

    Raises:
        StoreConnectionError: the server is unreachable (within a few seconds; no password shown).
        ConfigurationError: a malformed URI or an unescaped password (never shown).
    """

    def __init__(
        self,
        db_host: Any,
        db_name: str | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
        write_concern: WriteConcern | None = None,
        chunk_size_bytes: int = CHUNK_SIZE_BYTES,
        read_only: bool = False,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.database = MongoDatabase(db_host, db_name, write_concern, read_only, retry)
        self.checkpoints = self.database.collection(CHECKPOINTS_COLLECTION)
        self.scores = self.database.collection(SCORES_COLLECTION)
        self.bucket = gridfs.GridFSBucket(
            self.database.db, BUCKET_NAME, chunk_size_bytes=chunk_size_bytes,
            write_concern=self.database.write_concern,
        )
        self.catalog_primary = self.database.primary(self.checkpoints)
        self.bucket_files = self.database.collection(f"{BUCKET_NAME}.files")
        self.bucket_chunks = self.database.collection(f"{BUCKET_NAME}.chunks")
        self.stale_after = stale_after
        self.database.ensure_indexes(self.checkpoints, CHECKPOINT_INDEXES)
        self.database.ensure_indexes(self.scores, SCORE_INDEXES)

    def __repr__(self) -> str:
        return f"MongoWeightsStore({self.database.display!r}, db_name={self.database.db_name!r})"

    def list_checkpoints(self, run: Any) -> list[CheckpointInfo]:
        name = run_name_of(run)
        documents = self.database.read(
            f"listing the checkpoints of run {name!r}",
            lambda: list(self.checkpoints.find({"run": name, "state": "complete"}, sort=[("iteration", ASCENDING)])),
        )
        return [checkpoint_from_document(document) for document in documents]

    def list_runs(self) -> list[str]:
        return sorted(self.database.read("listing runs", lambda: self.checkpoints.distinct("run", {"state": "complete"})))

    def _reserve(self, run: str, iteration: int) -> Reservation:
        token = uuid.uuid4().hex
        for _ in range(2):
            now = time.time()
            try:
                self.checkpoints.insert_one(
                    {
                        "run": run,
                        "iteration": iteration,
                        "state": "pending",
                        "token": token,
                        "created": now,
                        "heartbeat": now,
                    }
                )
                return Reservation(run, iteration, token)
            except DuplicateKeyError:
                existing = self.checkpoints.find_one({"run": run, "iteration": iteration})
            if existing is None:
                continue  # removed in the meantime: try again
            if existing["state"] == "complete":
                raise CheckpointExistsError(f"{describe(run, iteration)} is already stored")
            if existing["heartbeat"] > now - self.stale_after:
                raise CheckpointExistsError(f"{describe(run, iteration)} is being stored by another writer")
            logger.warning("taking over the stale upload of %s", describe(run, iteration))
            self.checkpoints.delete_one(
                {"_id": existing["_id"], "token": existing["token"], "state": "pending"}
            )
        raise CheckpointExistsError(f"{describe(run, iteration)} is being stored by another writer")

    def _heartbeat(self, reservation: Reservation) -> None:
        """Refresh the reservation's heartbeat (retried: idempotent); ReservationLostError if
        it was taken over."""

        def beat() -> None:
            result = self.checkpoints.update_one(
                {"run": reservation.run, "iteration": reservation.iteration, "token": reservation.token},
                {"$set": {"heartbeat": time.time()}},
            )
            if result.matched_count != 1:
                raise reservation_lost(reservation, "while it was uploading")

        self.database.write(f"refreshing the reservation of {describe(reservation.run, reservation.iteration)}", beat)

    def _write_part(self, reservation: Reservation, part: str, state: Any) -> PartInfo:
        """Upload one part, retried as a whole: each attempt uploads under a new GridFS file id
        (recorded in the reservation before any chunk is sent, so clean-up finds every attempt)
        after the previous attempt's partial upload was aborted."""
        return self.database.write(
            f"uploading {describe(reservation.run, reservation.iteration, part)}",
            lambda: self._upload_part(reservation, part, state),
        )

    def _upload_part(self, reservation: Reservation, part: str, state: Any) -> PartInfo:
        """One attempt of :meth:`_write_part`; on failure, abort the partial upload (best
        effort: what stays is deleted with the reservation, or by garbage collection)."""
        file_id = ObjectId()
        reservation.payloads.append(str(file_id))
        upload = self.bucket.open_upload_stream_with_id(
            file_id,
            f"{reservation.run}/{reservation.iteration}/{part}",
            metadata={
                "run": reservation.run,
                "iteration": reservation.iteration,
                "part": part,
                "token": reservation.token,
            },
        )
        try:
            info = serialize_state(
                state,
                lambda view: upload.write(_ViewReader(view)),
                str(file_id),
                heartbeat=lambda: self._heartbeat(reservation),
                heartbeat_every=self.heartbeat_every,
            )
            upload.close()
        except BaseException:
            try:
                upload.abort()
            except Exception as error:
                logger.warning("could not abort the partial upload %s (%s); it is deleted later", file_id, error)
            raise
        return info

    def _commit(self, reservation: Reservation, parts: Mapping[str, PartInfo]) -> CheckpointInfo:
        document = self.checkpoints.find_one_and_update(
            {
                "run": reservation.run,
                "iteration": reservation.iteration,
                "token": reservation.token,
                "state": "pending",
            },
            {
                "$set": {  # "state" last: mongomock applies fields one by one, visible to threads
                    "heartbeat": time.time(),
                    "size": sum(p.size for p in parts.values()),
                    "parts": {name: part.to_document() for name, part in parts.items()},
                    "state": "complete",
                }
            },
            return_document=True,
        )
        if document is None:
            raise reservation_lost(reservation, "before it committed")
        return checkpoint_from_document(document)

    def _abandon(self, reservation: Reservation) -> None:
        for location in reservation.payloads:
            self._delete_payload(location)
        self.checkpoints.delete_one(
            {
                "run": reservation.run,
                "iteration": reservation.iteration,
                "token": reservation.token,
                "state": "pending",
            }
        )

    def _find(self, run: str, iteration: int) -> CheckpointInfo | None:
        """From the primary: the write protocol's clean-up relies on seeing a landed commit."""
        document = self.database.read(
            f"looking up {describe(run, iteration)}",
            lambda: self.catalog_primary.find_one({"run": run, "iteration": iteration, "state": "complete"}),
        )
        return None if document is None else checkpoint_from_document(document)

    def _load_part(self, info: CheckpointInfo, part: str, map_location: Any) -> Any:
        """:meth:`_load_part_once`, retried as a whole after a transient error."""
        where = describe(info.run, info.iteration, part)
        return self.database.read(f"loading {where}", lambda: self._load_part_once(info, part, map_location))

    def _load_part_once(self, info: CheckpointInfo, part: str, map_location: Any) -> Any:
        """``torch.load`` one part straight from its chunks (one cursor), hashing them as they
        come; if the load ever reads back to a chunk the reader dropped, load again keeping
        every chunk."""
        expected = info.parts[part]
        where = describe(info.run, info.iteration, part)
        with self._open_payload(expected, where) as (reader, finish):
            try:
                return load_verified(reader, finish, expected, map_location, where)
            except DroppedChunkError:
                logger.warning("%s: torch.load read out of order; loading again, keeping every chunk", where)
        with self._open_payload(expected, where, keep_all=True) as (reader, finish):
            return load_verified(reader, finish, expected, map_location, where)

    def _verify_part(self, info: CheckpointInfo, part: str) -> None:
        expected = info.parts[part]
        where = describe(info.run, info.iteration, part)

        def verify() -> None:
            with self._open_payload(expected, where) as (reader, finish):
                check_payload(*finish(), expected, where)

        self.database.read(f"verifying {where}", verify)

    @contextmanager
    def _open_payload(
        self, expected: PartInfo, where: str, keep_all: bool = False
    ) -> Iterator[tuple[ChunkReader, Callable[[], tuple[int, str]]]]:
        """Open the GridFS file of ``expected`` (one query for its files document); yield a
        :class:`ChunkReader` over it (see there for ``keep_all``) whose chunks are hashed as the
        cursor delivers them, and ``finish()``, which reads the rest and returns ``(size, digest)``.

        Raises:
            CorruptCheckpointError: an invalid digest or payload id, no files document, or a
                length other than the recorded size.
        """
        algorithm = verifying_algorithm(expected, where)
        try:
            file_id = ObjectId(expected.location)
        except InvalidId:
            raise CorruptCheckpointError(
                f"{where}: the catalog records an invalid payload id {expected.location!r}"
            ) from None
        document = self.bucket_files.find_one({"_id": file_id}, projection={"length": True, "chunkSize": True})
        if document is None:
            raise CorruptCheckpointError(f"{where}: its GridFS payload is missing")
        check_size(document.get("length"), expected, where)
        hash_object = new_hash(algorithm)
        chunk_size = document.get("chunkSize", 0)
        with ChunkReader(
            self.bucket_chunks, file_id, document["length"], chunk_size, hash_object.update, where, keep_all
        ) as reader:
            yield reader, lambda: (reader.read_rest(), format_digest(algorithm, hash_object))

    def _unlist(self, run: str, iteration: int) -> CheckpointInfo | None:
        document = self.checkpoints.find_one_and_delete(
            {"run": run, "iteration": iteration, "state": "complete"}
        )
        return None if document is None else checkpoint_from_document(document)

    def _delete_payload(self, location: str) -> None:
        try:
            self.bucket.delete(ObjectId(location))
        except gridfs.errors.NoFile:
            pass  # its chunks, if any, were deleted all the same

    def _latest_iteration(self, run: str) -> int | None:
        document = self.database.read(
            f"finding the latest checkpoint of run {run!r}",
            lambda: self.checkpoints.find_one(
                {"run": run, "state": "complete"},
                projection={"iteration": True, "_id": False},
                sort=[("iteration", DESCENDING)],
            ),
        )
        return None if document is None else document["iteration"]

    def _best_iteration(self, run: str, dataset: str, criterion: str) -> int:
        return self.database.read(
            f"finding the best score of run {run!r}",
            lambda: find_best_score(self.scores, run, dataset, criterion)["iteration"],
        )

    def _find_garbage(self, cutoff: float) -> list[GarbageItem]:
        files_collection, chunks = self.bucket_files, self.bucket_chunks
        with self.database.reporting_errors("scanning for garbage"):
            files = {
                document["_id"]: document
                for document in files_collection.find({}, projection={"length": True, "metadata.token": True})
                if isinstance(document["_id"], ObjectId)
            }
            chunked = {fid for fid in chunks.distinct("files_id") if isinstance(fid, ObjectId)}
            catalog = list(self.checkpoints.find({}, projection={"_id": False}))
            items = self._orphan_chunks(chunks, sorted(chunked - files.keys()), cutoff)
        referenced = {
            part["location"] for entry in catalog if entry["state"] == "complete"
            for part in entry["parts"].values()
        }
        pending = [
            PendingUpload(entry["token"], entry["run"], entry["iteration"], entry["heartbeat"])
            for entry in catalog if entry["state"] == "pending"
        ]
        payloads = [
            StoredPayload(
                str(file_id), (document.get("metadata") or {}).get("token"), document.get("length", 0)
            )
            for file_id, document in files.items()
        ]
        return items + classify_garbage(payloads, referenced, pending, cutoff)

    @staticmethod
    def _orphan_chunks(chunks: Any, file_ids: list[ObjectId], cutoff: float) -> list[GarbageItem]:
        """Chunks of ``file_ids`` (which have no files document), one item per file id, for
        those whose newest chunk was written before ``cutoff`` (an upload in progress keeps
        writing chunks, each with a fresh ObjectId)."""
        items = []
        for file_id in file_ids:
            size, newest = 0, 0.0
            for chunk in chunks.find({"files_id": file_id}, projection={"data": True}):
                size += len(chunk["data"])
                written = chunk["_id"]  # not an ObjectId: its age is unknown, keep it
                age = written.generation_time.timestamp() if isinstance(written, ObjectId) else math.inf
                newest = max(newest, age)
            if newest < cutoff:
                items.append(GarbageItem(ORPHAN_CHUNKS, (str(file_id),), size))
        return items

    def _remove_garbage(self, item: GarbageItem, cutoff: float) -> bool:
        """Orphan chunks go through :meth:`_remove_orphan_chunks`; the rest as every backend."""
        if item.kind == ORPHAN_CHUNKS:
            return self._remove_orphan_chunks(ObjectId(item.payloads[0]))
        return super()._remove_garbage(item, cutoff)

    def _remove_orphan_chunks(self, file_id: ObjectId) -> bool:
        """Delete the chunks of ``file_id`` unless its files document exists by now (the scan
        reads files, then chunks: an upload that closed in between looked orphaned). Deletes
        chunks only, never a files document; returns whether any chunk was deleted."""
        files, chunks = self.bucket_files, self.bucket_chunks

        def remove() -> bool:
            if files.find_one({"_id": file_id}, projection={"_id": True}) is not None:
                return False
            return chunks.delete_many({"files_id": file_id}).deleted_count > 0

        return self.database.write(f"removing the orphan chunks of {file_id}", remove)

    def _drop_stale_reservation(self, item: GarbageItem, cutoff: float) -> bool:
        result = self.checkpoints.delete_one(
            {
                "run": item.run,
                "iteration": item.iteration,
                "token": item.token,
                "state": "pending",
                "heartbeat": {"$lt": cutoff},
            }
        )
        return result.deleted_count == 1
