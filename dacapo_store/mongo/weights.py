"""The MongoDB weights store: payloads in GridFS, a catalog collection with a unique key.

Every step of the write protocol (reserve, each part's upload, heartbeat, commit, clean-up,
remove, garbage collection) runs under the store's retry policy (:mod:`.retry`) and is
idempotent under retry:

* **reserve**: a retried insert that had landed fails on the unique key; finding its own token
  in the entry, the step succeeds (likewise a replacement claim that had landed);
* **upload**: a part is uploaded again as a whole under a new GridFS file id, after the partial
  upload was aborted; every id goes into the reservation first, so clean-up deletes them all;
* **heartbeat**, **clean-up**, **payload deletes**: the same update or delete again;
* **commit**: a retry after a commit that had landed finds no pending entry and fails; the
  protocol's clean-up then finds the checkpoint complete with this upload's payloads and
  returns it (see ``WeightsStore.put_weights``);
* **remove**: the entry is read first, then deleted by its ``_id`` and token (or, while a live
  upload replaces it, turned into that upload's pending reservation); a retry that finds it gone
  after a failed attempt knows its own delete had landed.

A commit that lands but misses its write concern is undone (the new entry deleted, or a
replaced checkpoint's parts put back) and the call fails with WriteConcernFailedError; if the
undo fails too, the call still fails (``commit_may_survive``), and nothing is deleted.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError
from pymongo.write_concern import WriteConcern

from ..checks import run_name_of
from ..errors import CheckpointExistsError, WriteConcernFailedError
from ..records import PARTS, CheckpointInfo, PartInfo, RunTotals
from ..weights_store import (
    DEFAULT_STALE_AFTER,
    Reservation,
    WeightsStore,
    describe,
    reservation_lost,
)
from ._garbage import MongoGarbageCollection, claim_of
from .connection import DEFAULT_COLLECTION_PREFIX, MongoDatabase
from .payloads import CHUNK_SIZE_BYTES, GridFSPayloads, file_id_of
from .retry import RetryPolicy
from .scores import SCORE_INDEXES, SCORES_COLLECTION, MongoScoreCatalog

logger = logging.getLogger(__name__)

CHECKPOINTS_COLLECTION = "checkpoints"
CHECKPOINT_INDEXES = (
    ([("run", ASCENDING), ("iteration", ASCENDING)], {"name": "run_iteration", "unique": True}),
    (
        [("run", ASCENDING), ("state", ASCENDING), ("iteration", DESCENDING)],
        {"name": "run_state_iteration"},
    ),
)

RUN_TOTALS_PIPELINE = [
    {"$match": {"state": "complete"}},
    {
        "$group": {
            "_id": "$run",
            "checkpoints": {"$sum": 1},
            "latest_iteration": {"$max": "$iteration"},
            "bytes": {"$sum": {"$add": [{"$ifNull": [f"$parts.{part}.size", 0]} for part in PARTS]}},
            "last_stored": {"$max": "$created"},
        }
    },
    {"$sort": {"_id": 1}},
]
"""Every run's complete checkpoints in one aggregation: count, latest iteration, payload bytes
(the sizes of the parts, named by :data:`~dacapo_store.records.PARTS`), newest ``created``."""


def checkpoint_from_document(document: Mapping[str, Any]) -> CheckpointInfo:
    """Build the :class:`CheckpointInfo` of a complete catalog document."""
    return CheckpointInfo(
        run=document["run"],
        iteration=document["iteration"],
        created=document["created"],
        parts={name: PartInfo.from_document(part) for name, part in document["parts"].items()},
    )


class MongoWeightsStore(MongoGarbageCollection, WeightsStore):
    """Checkpoints in GridFS (bucket ``<prefix>weights``), catalogued in the
    ``<prefix>checkpoints`` collection (prefix ``dacapo_store.`` by default).

    The catalog's unique ``(run, iteration)`` index decides which writer wins before anything
    is uploaded; a checkpoint becomes visible only when its catalog document is marked complete
    with each part's size and digest. A :class:`MongoStatsStore` on the same database (and
    prefix) shares the validation scores that :meth:`retrieve_best` reads.

    Every operation retries transient errors (a failover, a lost connection) under ``retry``;
    each step of the write protocol is idempotent (see the module doc), so a retried step never
    duplicates or loses anything.

    Args:
        db_host: a MongoDB URI or an existing client (pymongo or mongomock).
        db_name: the database (default: the URI's, else ``"dacapo"``).
        stale_after: seconds without progress after which a pending upload may be taken over.
        write_concern: default: the URI's, each unset field from ``w="majority", j=True``.
        chunk_size_bytes: GridFS chunk size of new uploads.
        collection_prefix: put before every collection name (see
            :class:`~dacapo_store.mongo.connection.MongoDatabase`).
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
        collection_prefix: str = DEFAULT_COLLECTION_PREFIX,
        read_only: bool = False,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(stale_after)
        self.database = MongoDatabase.of(db_host, db_name, write_concern, read_only, retry, collection_prefix)
        self.checkpoints = self.database.collection(CHECKPOINTS_COLLECTION)
        self.catalog_primary = self.database.primary(self.checkpoints)
        """The catalog read from the primary: the write protocol's reads must see its writes."""
        self.scores = self.database.collection(SCORES_COLLECTION)
        self.payloads = GridFSPayloads(self.database, chunk_size_bytes)
        """The payload store (GridFS); each of its calls runs under this store's retry policy."""
        self.database.ensure_indexes(self.checkpoints, CHECKPOINT_INDEXES)
        self.database.ensure_indexes(self.scores, SCORE_INDEXES)

    @property
    def bucket(self) -> Any:
        """The GridFS bucket of the payloads (:attr:`payloads`)."""
        return self.payloads.bucket

    @property
    def bucket_files(self) -> Any:
        """The bucket's files collection (the URI's read preference)."""
        return self.payloads.files

    @property
    def bucket_chunks(self) -> Any:
        """The bucket's chunks collection (the URI's read preference)."""
        return self.payloads.chunks

    @property
    def score_catalog(self) -> MongoScoreCatalog:
        """The best-score queries on :attr:`scores` (one place for weights and stats)."""
        return MongoScoreCatalog(self.database, self.scores)

    def __repr__(self) -> str:
        return f"MongoWeightsStore({self.database.display!r}, db_name={self.database.db_name!r})"

    def _require_writable(self, action: str) -> None:
        self.database.require_writable(action)

    def list_checkpoints(self, run: Any) -> list[CheckpointInfo]:
        name = run_name_of(run)
        documents = self.database.read(
            f"listing the checkpoints of run {name!r}",
            lambda: list(self.checkpoints.find({"run": name, "state": "complete"}, sort=[("iteration", ASCENDING)])),
        )
        return [checkpoint_from_document(document) for document in documents]

    def list_runs(self) -> list[str]:
        return sorted(self.database.read("listing runs", lambda: self.checkpoints.distinct("run", {"state": "complete"})))

    def run_totals(self) -> list[RunTotals]:
        documents = self.database.read(
            "summing up the checkpoints of every run", lambda: list(self.checkpoints.aggregate(RUN_TOTALS_PIPELINE))
        )
        return [
            RunTotals(d["_id"], d["checkpoints"], d["latest_iteration"], int(d["bytes"]), d["last_stored"])
            for d in documents
        ]

    def _reserve(self, reservation: Reservation, replace: bool) -> None:
        """Claim ``(run, iteration)`` (retried as a whole, see the module doc); a reservation
        whose write concern failed is dropped again (best effort) before the error is raised."""
        where = describe(reservation.run, reservation.iteration)
        try:
            self.database.write(f"reserving {where}", lambda: self._reserve_once(reservation, replace))
        except WriteConcernFailedError:
            try:
                self._drop_claim(reservation.run, reservation.iteration, reservation.token)
            except Exception as error:
                logger.warning("could not drop the reservation of %s again: %s", where, error)
            raise

    def _reserve_once(self, reservation: Reservation, replace: bool) -> None:
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
                existing = self.catalog_primary.find_one({"run": run, "iteration": iteration})
            if existing is None:
                continue  # removed in the meantime: try again
            if existing.get("token") == reservation.token and existing["state"] == "pending":
                return  # a retried insert: the first attempt had landed
            if (existing.get("replacement") or {}).get("token") == reservation.token:
                reservation.replaces = checkpoint_from_document(existing)
                return  # a retried replacement claim that had landed
            if existing["state"] == "complete":
                if not replace:
                    raise CheckpointExistsError(f"{describe(run, iteration)} is already stored")
                if self._claim_replacement(existing, claim, now):
                    reservation.replaces = checkpoint_from_document(existing)
                    return
                continue
            if not claim_of(existing).abandoned(now - self.stale_after):
                raise CheckpointExistsError(f"{describe(run, iteration)} is being stored by another writer")
            dropped = self.checkpoints.delete_one(
                {"_id": existing["_id"], "token": existing["token"], "state": "pending"}
            )
            if dropped.deleted_count:  # else it was committed or taken over meanwhile: look again
                logger.warning("taking over the abandoned upload of %s", describe(run, iteration))
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
            if not claim_of(existing).abandoned(now - self.stale_after):
                raise CheckpointExistsError(f"{where} is being replaced by another writer")
        result = self.checkpoints.update_one(
            {
                "_id": existing["_id"],
                "state": "complete",
                "token": existing["token"],
                "replacement.token": held["token"] if held is not None else {"$exists": False},
            },
            {"$set": {"replacement": claim}},
        )
        if held is not None and result.matched_count == 1:
            logger.warning("taking over the abandoned replacement of %s", where)
        return result.matched_count == 1

    def _heartbeat(self, reservation: Reservation) -> None:
        """Refresh the reservation's heartbeat (retried: the same update again);
        ReservationLostError if it was taken over. A replacement claim that a remove turned into
        a pending reservation is refreshed as one (and ``reservation.replaces`` becomes ``None``)."""
        where = {"run": reservation.run, "iteration": reservation.iteration}

        def beat() -> None:
            if reservation.replaces is not None and self.checkpoints.update_one(
                {**where, "replacement.token": reservation.token},
                {"$set": {"replacement.heartbeat": time.time()}},
            ).matched_count:
                return
            result = self.checkpoints.update_one(
                {**where, "token": reservation.token, "state": "pending"}, {"$set": {"heartbeat": time.time()}}
            )
            if result.matched_count != 1:
                raise reservation_lost(reservation, "while it was uploading")
            reservation.replaces = None

        self.database.write(f"refreshing the reservation of {describe(reservation.run, reservation.iteration)}", beat)

    def _write_part(self, reservation: Reservation, part: str, state: Any) -> PartInfo:
        """Upload one part, retried as a whole: each attempt uploads under a new GridFS file id
        (recorded in the reservation before any chunk is sent, so clean-up finds every attempt)
        after the previous attempt's partial upload was aborted. A partial upload whose abort
        failed is deleted once an attempt succeeds (else by clean-up or garbage collection)."""
        where = describe(reservation.run, reservation.iteration, part)
        unaborted: list[str] = []
        info = self.database.write(f"uploading {where}", lambda: self._upload_part(reservation, part, state, unaborted))
        for location in unaborted:
            try:
                self._delete_payload(location)
            except Exception as error:
                logger.warning("could not delete the partial upload %s of %s (%s); gc reclaims it", location, where, error)
        return info

    def _upload_part(self, reservation: Reservation, part: str, state: Any, unaborted: list[str]) -> PartInfo:
        """One attempt of :meth:`_write_part` under a new GridFS file id; on failure, the
        payload store aborts the partial upload (if that fails too, its id goes to ``unaborted``)."""
        location = self.payloads.new_location()
        reservation.payloads.append(location)
        return self.payloads.write(
            location,
            self._serializing(reservation, state, location),
            filename=f"{reservation.run}/{reservation.iteration}/{part}",
            metadata={
                "run": reservation.run,
                "iteration": reservation.iteration,
                "part": part,
                "token": reservation.token,
            },
            unaborted=unaborted,
        )

    def _commit(self, reservation: Reservation, parts: Mapping[str, PartInfo]) -> CheckpointInfo:
        """Mark the checkpoint complete (retried; see the module doc). A commit that missed its
        write concern is undone before the error is raised, so that clean-up deletes the new
        payloads and nothing of this upload stays visible."""
        where = describe(reservation.run, reservation.iteration)
        try:
            return self.database.write(f"committing {where}", lambda: self._commit_once(reservation, parts))
        except WriteConcernFailedError as error:
            try:
                self.database.write(f"undoing the commit of {where}", lambda: self._undo_commit(reservation))
            except Exception as undo_error:
                uncertain = WriteConcernFailedError(
                    f"{error}; the commit could not be undone ({undo_error}): {where} is listed now and may or "
                    "may not survive (a failover can roll it back); store it again to be sure"
                )
                uncertain.commit_may_survive = True
                raise uncertain from error
            raise

    def _commit_once(self, reservation: Reservation, parts: Mapping[str, PartInfo]) -> CheckpointInfo:
        now = time.time()
        completion = {  # "state" last: mongomock applies fields one by one, visible to threads
            "heartbeat": now,
            "size": sum(p.size for p in parts.values()),
            "parts": {name: part.to_document() for name, part in parts.items()},
            "state": "complete",
        }
        where = {"run": reservation.run, "iteration": reservation.iteration}
        document = None
        if reservation.replaces is not None:
            document = self.checkpoints.find_one_and_update(
                {**where, "replacement.token": reservation.token, "state": "complete"},
                {
                    "$set": {"token": reservation.token, "created": now, "owner": reservation.owner, **completion},
                    "$unset": {"replacement": ""},
                },
                return_document=True,
            )
        if document is None:  # a plain store, or a replacement whose checkpoint was removed
            document = self.checkpoints.find_one_and_update(
                {**where, "token": reservation.token, "state": "pending"},
                {"$set": completion},
                return_document=True,
            )
            if document is not None:
                reservation.replaces = None  # its payloads went with the remove
        if document is None:
            raise reservation_lost(reservation, "before it committed")
        return checkpoint_from_document(document)

    def _undo_commit(self, reservation: Reservation) -> None:
        """Take back a commit of ``reservation`` (if it landed): delete the new entry, or put
        the replaced checkpoint's parts back; the new payloads are then unreferenced."""
        where = {"run": reservation.run, "iteration": reservation.iteration, "token": reservation.token}
        old = reservation.replaces
        if old is None:
            self.checkpoints.delete_one({**where, "state": "complete"})
            return
        self.checkpoints.update_one(
            {**where, "state": "complete"},
            {"$set": {
                "token": uuid.uuid4().hex,
                "created": old.created,
                "size": old.size,
                "parts": {name: part.to_document() for name, part in old.parts.items()},
            }},
        )

    def _abandon(self, reservation: Reservation) -> None:
        for location in reservation.payloads:
            self._delete_payload(location)
        self._drop_claim(reservation.run, reservation.iteration, reservation.token)

    def _drop_claim(self, run: str, iteration: int, token: str, heartbeat: float | None = None) -> bool:
        """Drop the upload claim ``token`` on ``(run, iteration)``: delete its pending entry,
        or remove its replacement claim from the stored checkpoint (only if its heartbeat is
        still ``heartbeat``, when given); return whether there was one. Retried: dropping a
        dropped claim changes nothing."""
        beat = {} if heartbeat is None else {"heartbeat": heartbeat}
        where = {"run": run, "iteration": iteration}

        def drop() -> bool:
            if self.checkpoints.delete_one({**where, "token": token, "state": "pending", **beat}).deleted_count:
                return True
            replacement = {f"replacement.{key}": value for key, value in {"token": token, **beat}.items()}
            result = self.checkpoints.update_one({**where, **replacement}, {"$unset": {"replacement": ""}})
            return result.modified_count == 1

        return self.database.write(f"dropping the upload claim on {describe(run, iteration)}", drop)

    def _find(self, run: str, iteration: int) -> CheckpointInfo | None:
        """From the primary: the write protocol's clean-up relies on seeing a landed commit."""
        document = self.database.read(
            f"looking up {describe(run, iteration)}",
            lambda: self.catalog_primary.find_one({"run": run, "iteration": iteration, "state": "complete"}),
        )
        return None if document is None else checkpoint_from_document(document)

    def _load_part(self, info: CheckpointInfo, part: str, map_location: Any, mmap: bool = False) -> Any:
        """The payload store's load (read where the read preference sends reads, else from the
        primary; see :meth:`GridFSPayloads.load`), retried as a whole after a transient error.
        ``mmap`` is ignored: there is no file to map."""
        where = describe(info.run, info.iteration, part)
        return self.database.read(f"loading {where}", lambda: self.payloads.load(info.parts[part], map_location, where))

    def _verify_part(self, info: CheckpointInfo, part: str) -> None:
        """Check the primary's copy: the one that every other copy replicates."""
        where = describe(info.run, info.iteration, part)
        self.database.read(f"verifying {where}", lambda: self.payloads.verify(info.parts[part], where))

    def _unlist(self, run: str, iteration: int) -> CheckpointInfo | None:
        """Read the complete entry, then delete exactly that entry (its ``_id`` and token), or
        turn it into the pending reservation of the live upload that replaces it (see
        ``WeightsStore._unlist``), retried: a retry that finds it gone after a failed attempt
        knows its own delete had landed. An entry replaced in between is read again."""
        where = describe(run, iteration)
        for _ in range(3):
            document = self.database.read(
                f"looking up {where}",
                lambda: self.catalog_primary.find_one({"run": run, "iteration": iteration, "state": "complete"}),
            )
            if document is None:
                return None
            replacement = document.get("replacement")
            entry = {  # exactly the entry read: a replacement claim put on it since is read again
                "_id": document["_id"], "token": document["token"], "state": "complete",
                "replacement.token": replacement["token"] if replacement is not None else {"$exists": False},
            }
            live = replacement is not None and not claim_of(document).abandoned(time.time() - self.stale_after)
            attempts = []

            def delete() -> bool:
                attempts.append(1)
                if live:  # the overwrite goes on as a plain store
                    unlisted = self.checkpoints.find_one_and_update(
                        entry,
                        {
                            "$set": {"state": "pending", "created": time.time(), **replacement},
                            "$unset": {"replacement": "", "parts": "", "size": ""},
                        },
                        projection={"_id": True},
                    )
                else:
                    unlisted = self.checkpoints.find_one_and_delete(entry, projection={"_id": True})
                return unlisted is not None or len(attempts) > 1

            if self.database.write(f"removing {where}", delete):
                return checkpoint_from_document(document)
        return None

    def _delete_payload(self, location: str) -> bool:
        """Delete the GridFS file ``location`` (see :meth:`GridFSPayloads.delete`), retried.

        Raises:
            CorruptCheckpointError: ``location`` is not a GridFS file id (nothing sent).
        """
        file_id_of(location)
        return self.database.write(f"deleting payload {location}", lambda: self.payloads.delete(location))

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
