"""Garbage collection of the MongoDB backend: scan the GridFS bucket (through the payload store,
:meth:`~dacapo_store.mongo.payloads.GridFSPayloads.inventory`) and the catalog (from the
primary), classify as every backend does (:func:`~dacapo_store._garbage.classify_garbage`),
plus chunks whose files document is gone; drop stale reservations and orphan chunks.
:class:`MongoGarbageCollection` is mixed into :class:`~dacapo_store.mongo.weights.MongoWeightsStore`,
whose catalog, payload store and database it uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._garbage import ORPHAN_CHUNKS, GarbageItem, classify_garbage
from .._reservations import PendingUpload, describe
from ..payload_store import PARTIAL_SUFFIX


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
        unreferenced, or chunks whose files document it lacks yet as orphans. The payloads are
        listed before the catalog is read."""
        published, unpublished = self.payloads.inventory(cutoff)
        catalog = list(self.catalog_primary.find({}, projection={"_id": False}))
        items = [GarbageItem(ORPHAN_CHUNKS, (location,), size) for location, size in unpublished.items()]
        referenced = {
            part["location"] for entry in catalog if entry["state"] == "complete"
            for part in entry["parts"].values()
        }
        pending = [claim_of(entry) for entry in catalog if entry["state"] == "pending" or "replacement" in entry]
        return items + classify_garbage(published, referenced, pending, cutoff)

    def _remove_garbage(self, item: GarbageItem, cutoff: float) -> bool:
        """Orphan chunks go through :meth:`_remove_orphan_chunks`; the rest as every backend."""
        if item.kind == ORPHAN_CHUNKS:
            return self._remove_orphan_chunks(item.payloads[0])
        return super()._remove_garbage(item, cutoff)

    def _remove_orphan_chunks(self, location: str) -> bool:
        """Delete the chunks of the upload ``location`` unless its files document exists by now
        (the scan reads files, then chunks: an upload that closed in between looked orphaned).
        Deletes chunks only, never a files document; returns whether any chunk was deleted. The
        check reads the primary (see :meth:`~dacapo_store.mongo.payloads.GridFSPayloads.delete`
        of ``<id>.partial``)."""
        return self.database.write(
            f"removing the orphan chunks of {location}", lambda: self.payloads.delete(location + PARTIAL_SUFFIX)
        )

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
