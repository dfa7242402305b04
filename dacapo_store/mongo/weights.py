"""The MongoDB weights store: payloads in GridFS, a catalog collection with a unique key."""

from __future__ import annotations

import logging
import math
import time
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
from .connection import DEFAULT_COLLECTION_PREFIX, DEFAULT_WRITE_CONCERN, MongoDatabase
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
    """Checkpoints in GridFS (bucket ``<prefix>weights``), catalogued in the
    ``<prefix>checkpoints`` collection (prefix ``dacapo_store.`` by default).

    The catalog's unique ``(run, iteration)`` index decides which writer wins before anything
    is uploaded; a checkpoint becomes visible only when its catalog document is marked complete
    with each part's size and digest. A :class:`MongoStatsStore` on the same database (and
    prefix) shares the validation scores that :meth:`retrieve_best` reads.

    Args:
        db_host: a MongoDB URI or an existing client (pymongo or mongomock).
        db_name: the database (default ``"dacapo"``).
        stale_after: seconds without progress after which a pending upload may be taken over.
        write_concern: default ``w="majority", j=True``.
        chunk_size_bytes: GridFS chunk size of new uploads.
        collection_prefix: put before every collection name (see
            :class:`~dacapo_store.mongo.connection.MongoDatabase`).

    Raises:
        StoreConnectionError: the server is unreachable (within a few seconds; no password shown).
    """

    def __init__(
        self,
        db_host: Any,
        db_name: str = "dacapo",
        stale_after: float = DEFAULT_STALE_AFTER,
        write_concern: WriteConcern = DEFAULT_WRITE_CONCERN,
        chunk_size_bytes: int = CHUNK_SIZE_BYTES,
        collection_prefix: str = DEFAULT_COLLECTION_PREFIX,
    ) -> None:
        super().__init__(stale_after)
        self.database = MongoDatabase(db_host, db_name, write_concern, collection_prefix)
        self.checkpoints = self.database.collection(CHECKPOINTS_COLLECTION)
        self.scores = self.database.collection(SCORES_COLLECTION)
        self.bucket = gridfs.GridFSBucket(
            self.database.db,
            collection_prefix + BUCKET_NAME,
            chunk_size_bytes=chunk_size_bytes,
            write_concern=write_concern,
        )
        self.bucket_files = self.database.collection(f"{BUCKET_NAME}.files")
        self.bucket_chunks = self.database.collection(f"{BUCKET_NAME}.chunks")
        self.database.ensure_indexes(self.checkpoints, CHECKPOINT_INDEXES)
        self.database.ensure_indexes(self.scores, SCORE_INDEXES)

    def __repr__(self) -> str:
        return f"MongoWeightsStore({self.database.display!r}, db_name={self.database.db_name!r})"

    def list_checkpoints(self, run: Any) -> list[CheckpointInfo]:
        documents = self.checkpoints.find(
            {"run": run_name_of(run), "state": "complete"}, sort=[("iteration", ASCENDING)]
        )
        return [checkpoint_from_document(document) for document in documents]

    def list_runs(self) -> list[str]:
        return sorted(self.checkpoints.distinct("run", {"state": "complete"}))

    def _reserve(self, reservation: Reservation, replace: bool) -> None:
        run, iteration = reservation.run, reservation.iteration
        for _ in range(3):
            now = time.time()
            claim = {"token": reservation.token, "heartbeat": now, "owner": reservation.owner}
            try:
                self.checkpoints.insert_one(
                    {"run": run, "iteration": iteration, "state": "pending", "created": now, **claim}
                )
                return
            except DuplicateKeyError:
                existing = self.checkpoints.find_one({"run": run, "iteration": iteration})
            if existing is None:
                continue  # removed in the meantime: try again
            if existing["state"] == "complete":
                if not replace:
                    raise CheckpointExistsError(f"{describe(run, iteration)} is already stored")
                if self._claim_replacement(existing, claim, now):
                    reservation.replaces = checkpoint_from_document(existing)
                    return
                continue
            if not _claim_of(existing).abandoned(now - self.stale_after):
                raise CheckpointExistsError(f"{describe(run, iteration)} is being stored by another writer")
            logger.warning("taking over the abandoned upload of %s", describe(run, iteration))
            self.checkpoints.delete_one(
                {"_id": existing["_id"], "token": existing["token"], "state": "pending"}
            )
        raise CheckpointExistsError(f"{describe(run, iteration)} is being stored by another writer")

    def _claim_replacement(self, existing: Mapping[str, Any], claim: dict[str, Any], now: float) -> bool:
        """Put the replacement ``claim`` on the stored checkpoint ``existing``, unless another
        writer's replacement claim on it is alive; return whether the claim was put (``False``:
        the entry changed since it was read, look again).

        Raises:
            CheckpointExistsError: another writer is replacing the checkpoint.
        """
        where = describe(existing["run"], existing["iteration"])
        held = existing.get("replacement")
        if held is not None:
            if not _claim_of(existing).abandoned(now - self.stale_after):
                raise CheckpointExistsError(f"{where} is being replaced by another writer")
            logger.warning("taking over the abandoned replacement of %s", where)
        result = self.checkpoints.update_one(
            {
                "_id": existing["_id"],
                "state": "complete",
                "token": existing["token"],
                "replacement.token": held["token"] if held is not None else {"$exists": False},
            },
            {"$set": {"replacement": claim}},
        )
        return result.matched_count == 1

    def _heartbeat(self, reservation: Reservation) -> None:
        """Refresh the reservation's heartbeat; ReservationLostError if it was taken over."""
        claim = "replacement." if reservation.replaces else ""
        result = self.checkpoints.update_one(
            {"run": reservation.run, "iteration": reservation.iteration, f"{claim}token": reservation.token},
            {"$set": {f"{claim}heartbeat": time.time()}},
        )
        if result.matched_count != 1:
            raise reservation_lost(reservation, "while it was uploading")

    def _write_part(self, reservation: Reservation, part: str, state: Any) -> PartInfo:
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
            upload.abort()
            raise
        return info

    def _commit(self, reservation: Reservation, parts: Mapping[str, PartInfo]) -> CheckpointInfo:
        now = time.time()
        completion = {  # "state" last: mongomock applies fields one by one, visible to threads
            "heartbeat": now,
            "size": sum(p.size for p in parts.values()),
            "parts": {name: part.to_document() for name, part in parts.items()},
            "state": "complete",
        }
        where = {"run": reservation.run, "iteration": reservation.iteration}
        if reservation.replaces is None:
            document = self.checkpoints.find_one_and_update(
                {**where, "token": reservation.token, "state": "pending"},
                {"$set": completion},
                return_document=True,
            )
        else:
            document = self.checkpoints.find_one_and_update(
                {**where, "replacement.token": reservation.token, "state": "complete"},
                {
                    "$set": {"token": reservation.token, "created": now, "owner": reservation.owner, **completion},
                    "$unset": {"replacement": ""},
                },
                return_document=True,
            )
        if document is None:
            raise reservation_lost(reservation, "before it committed")
        return checkpoint_from_document(document)

    def _abandon(self, reservation: Reservation) -> None:
        for location in reservation.payloads:
            self._delete_payload(location)
        self._drop_claim(reservation.run, reservation.iteration, reservation.token)

    def _drop_claim(self, run: str, iteration: int, token: str, heartbeat: float | None = None) -> bool:
        """Drop the upload claim ``token`` on ``(run, iteration)``: delete its pending entry,
        or remove its replacement claim from the stored checkpoint (only if its heartbeat is
        still ``heartbeat``, when given); return whether there was one."""
        beat = {} if heartbeat is None else {"heartbeat": heartbeat}
        where = {"run": run, "iteration": iteration}
        if self.checkpoints.delete_one({**where, "token": token, "state": "pending", **beat}).deleted_count:
            return True
        replacement = {f"replacement.{key}": value for key, value in {"token": token, **beat}.items()}
        result = self.checkpoints.update_one({**where, **replacement}, {"$unset": {"replacement": ""}})
        return result.modified_count == 1

    def _find(self, run: str, iteration: int) -> CheckpointInfo | None:
        document = self.checkpoints.find_one({"run": run, "iteration": iteration, "state": "complete"})
        return None if document is None else checkpoint_from_document(document)

    def _load_part(self, info: CheckpointInfo, part: str, map_location: Any) -> Any:
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
        with self._open_payload(expected, where) as (reader, finish):
            check_payload(*finish(), expected, where)

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

    def _delete_payload(self, location: str) -> bool:
        """Delete the GridFS file ``location``: its files document first, then its chunks
        (GridFS's order: a failure in between leaves orphan chunks, never a file that lacks
        chunks)."""
        try:
            file_id = ObjectId(location)
        except (InvalidId, TypeError):
            raise CorruptCheckpointError(f"the catalog records an invalid payload id {location!r}") from None
        deleted = self.bucket_files.delete_one({"_id": file_id}).deleted_count
        return deleted + self.bucket_chunks.delete_many({"files_id": file_id}).deleted_count > 0

    def _latest_iteration(self, run: str) -> int | None:
        document = self.checkpoints.find_one(
            {"run": run, "state": "complete"},
            projection={"iteration": True, "_id": False},
            sort=[("iteration", DESCENDING)],
        )
        return None if document is None else document["iteration"]

    def _best_iteration(self, run: str, dataset: str, criterion: str) -> int:
        return find_best_score(self.scores, run, dataset, criterion)["iteration"]

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
        pending = [_claim_of(entry) for entry in catalog if entry["state"] == "pending" or "replacement" in entry]
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
        with self.database.reporting_errors("removing orphan chunks"):
            if files.find_one({"_id": file_id}, projection={"_id": True}) is not None:
                return False
            return chunks.delete_many({"files_id": file_id}).deleted_count > 0

    def _drop_stale_reservation(self, item: GarbageItem, cutoff: float) -> bool:
        entry = self.checkpoints.find_one(
            {
                "run": item.run,
                "iteration": item.iteration,
                "$or": [{"token": item.token, "state": "pending"}, {"replacement.token": item.token}],
            }
        )
        if entry is None:
            return False
        claim = _claim_of(entry)
        if claim.token != item.token or not claim.abandoned(cutoff):
            return False
        return self._drop_claim(item.run, item.iteration, item.token, heartbeat=claim.heartbeat)


def _claim_of(entry: Mapping[str, Any]) -> PendingUpload:
    """The upload claim of a catalog document: its pending reservation, or the replacement
    claim on a stored checkpoint."""
    claim = entry if entry["state"] == "pending" else entry["replacement"]
    return PendingUpload(claim["token"], entry["run"], entry["iteration"], claim["heartbeat"], claim.get("owner"))
