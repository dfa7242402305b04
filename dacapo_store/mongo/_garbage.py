"""Garbage collection of the MongoDB backend: scan the GridFS bucket and the catalog (from the
primary), classify as every backend does (:func:`~dacapo_store._garbage.classify_garbage`),
plus chunks whose files document is gone; drop stale reservations and orphan chunks.
:class:`MongoGarbageCollection` is mixed into :class:`~dacapo_store.mongo.weights.MongoWeightsStore`,
whose catalog, bucket collections and database it uses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bson import ObjectId

from .._garbage import ORPHAN_CHUNKS, GarbageItem, StoredPayload, classify_garbage
from .._reservations import PendingUpload, describe


def claim_of(entry: Mapping[str, Any]) -> PendingUpload:
    """The upload claim of a catalog document: its pending reservation, or the replacement
    claim on a stored checkpoint."""
    claim = entry if entry["state"] == "pending" else entry["replacement"]
    return PendingUpload(claim["token"], entry["run"], entry["iteration"], claim["heartbeat"], claim.get("owner"))


class MongoGarbageCollection:
    """The garbage collection hooks of :class:`~dacapo_store.WeightsStore` for GridFS (a mixin
    placed before ``WeightsStore``)."""

    def _find_garbage(self, cutoff: float) -> list[GarbageItem]:
        return self.database.read("scanning for garbage", lambda: self._find_garbage_once(cutoff))

    def _find_garbage_once(self, cutoff: float) -> list[GarbageItem]:
        """Everything from the primary: a lagging secondary would show live payloads as
        unreferenced, or chunks whose files document it lacks yet as orphans."""
        files_collection, chunks = self.payloads_primary.files, self.payloads_primary.chunks
        files = {
            document["_id"]: document
            for document in files_collection.find({}, projection={"length": True, "metadata.token": True})
            if isinstance(document["_id"], ObjectId)
        }
        chunked = {fid for fid in chunks.distinct("files_id") if isinstance(fid, ObjectId)}
        catalog = list(self.catalog_primary.find({}, projection={"_id": False}))
        items = self._orphan_chunks(chunks, sorted(chunked - files.keys()), cutoff)
        referenced = {
            part["location"] for entry in catalog if entry["state"] == "complete"
            for part in entry["parts"].values()
        }
        pending = [claim_of(entry) for entry in catalog if entry["state"] == "pending" or "replacement" in entry]
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
        chunks only, never a files document; returns whether any chunk was deleted. The check
        reads the primary."""
        files, chunks = self.payloads_primary.files, self.bucket_chunks

        def remove() -> bool:
            if files.find_one({"_id": file_id}, projection={"_id": True}) is not None:
                return False
            return chunks.delete_many({"files_id": file_id}).deleted_count > 0

        return self.database.write(f"removing the orphan chunks of {file_id}", remove)

    def _drop_stale_reservation(self, item: GarbageItem, cutoff: float) -> bool:
        entry = self.database.read(
            f"looking up the reservation of {describe(item.run, item.iteration)}",
            lambda: self.catalog_primary.find_one(
                {
                    "run": item.run,
                    "iteration": item.iteration,
                    "$or": [{"token": item.token, "state": "pending"}, {"replacement.token": item.token}],
                }
            ),
        )
        if entry is None:
            return False
        claim = claim_of(entry)
        if claim.token != item.token or not claim.abandoned(cutoff):
            return False
        return self._drop_claim(item.run, item.iteration, item.token, heartbeat=claim.heartbeat)
