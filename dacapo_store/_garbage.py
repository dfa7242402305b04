"""Garbage collection's classification, the same for every backend: what a scan of the payload
storage found (:class:`StoredPayload`), what goes (:class:`GarbageItem`, by kind) and the
report (:class:`GarbageReport`). The backends scan and delete; :func:`classify_garbage`
decides; :class:`GarbageCollection` is the :meth:`~dacapo_store.WeightsStore.collect_garbage`
API on top of the backend's scan and deletes."""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

from ._reservations import PendingUpload, describe

logger = logging.getLogger("dacapo_store.weights_store")

STALE_RESERVATION = "stale-reservation"
ORPHAN_PAYLOAD = "orphan-payload"
PARTIAL_FILE = "partial-file"
ORPHAN_CHUNKS = "orphan-chunks"
GARBAGE_KINDS = (STALE_RESERVATION, ORPHAN_PAYLOAD, PARTIAL_FILE, ORPHAN_CHUNKS)
"""What :meth:`WeightsStore.collect_garbage` reclaims: abandoned uploads (a pending reservation
whose heartbeat is stale, with its payloads), payloads no catalog entry or live upload owns,
local ``.partial`` files, and GridFS chunks whose files document is gone."""


@dataclass(frozen=True)
class GarbageItem:
    """One thing garbage collection removes (or would remove).

    ``kind`` is one of :data:`GARBAGE_KINDS`; ``payloads`` are the backend locations deleted
    (GridFS file ids or payload file names); ``size`` their bytes. A stale reservation also
    names its ``run``, ``iteration`` and ``token``.
    """

    kind: str
    payloads: tuple[str, ...]
    size: int
    run: str | None = None
    iteration: int | None = None
    token: str | None = None

    def __str__(self) -> str:
        what = ", ".join(self.payloads) or "no payload"
        if self.kind == STALE_RESERVATION:
            return f"{self.kind}: {describe(self.run, self.iteration)} ({what}; {self.size} bytes)"
        return f"{self.kind}: {what} ({self.size} bytes)"


@dataclass(frozen=True)
class GarbageReport:
    """What :meth:`WeightsStore.collect_garbage` removed (or, with ``dry_run``, would remove)."""

    items: tuple[GarbageItem, ...]
    dry_run: bool

    @property
    def bytes_freed(self) -> int:
        """Bytes of payload removed (or that would be removed)."""
        return sum(item.size for item in self.items)


@dataclass(frozen=True)
class StoredPayload:
    """A payload found in a backend's storage during garbage collection: its ``location``,
    the ``token`` of the upload that wrote it (``None`` if unknown), its ``size`` in bytes, and
    whether it was left ``unfinished`` (a local ``.partial`` file)."""

    location: str
    token: str | None
    size: int
    unfinished: bool = False


def classify_garbage(
    payloads: Iterable[StoredPayload],
    referenced: set[str],
    pending: Iterable[PendingUpload],
    cutoff: float,
) -> list[GarbageItem]:
    """Sort the payloads of a scan into garbage, the same way for every backend.

    A payload is kept when a complete checkpoint references it or its upload is live (a
    heartbeat at or after ``cutoff`` and an owner not known to be dead). An abandoned upload
    becomes one STALE_RESERVATION item with all its payloads; any other payload is an
    ORPHAN_PAYLOAD (or PARTIAL_FILE if unfinished).
    """
    pending = list(pending)
    stale = {upload.token: upload for upload in pending if upload.abandoned(cutoff)}
    live = {upload.token for upload in pending if upload.token not in stale}
    owned: dict[str, list[StoredPayload]] = {token: [] for token in stale}
    items = []
    for payload in sorted(payloads, key=lambda payload: payload.location):
        if payload.location in referenced or payload.token in live:
            continue
        if payload.token in owned:
            owned[payload.token].append(payload)
        else:
            kind = PARTIAL_FILE if payload.unfinished else ORPHAN_PAYLOAD
            items.append(GarbageItem(kind, (payload.location,), payload.size))
    for token, upload in stale.items():
        mine = owned[token]
        items.append(
            GarbageItem(
                STALE_RESERVATION,
                tuple(payload.location for payload in mine),
                sum(payload.size for payload in mine),
                upload.run,
                upload.iteration,
                token,
            )
        )
    return items


class GarbageCollection(ABC):
    """:meth:`collect_garbage` for :class:`~dacapo_store.WeightsStore` (which provides
    ``stale_after``, ``_require_writable``, ``_retry_failed_drops`` and ``_delete_payload``);
    a backend implements :meth:`_find_garbage` and :meth:`_drop_stale_reservation`."""

    stale_after: float

    def collect_garbage(
        self, older_than: float = 3600.0, dry_run: bool = False, now: float | None = None
    ) -> GarbageReport:
        """Remove what no complete checkpoint and no live upload owns.

        An upload is live while its pending reservation's heartbeat (or, for GridFS chunks
        without a files document, its newest chunk) is younger than ``older_than`` seconds
        before ``now`` (default: the current time). Removed: stale reservations with their
        payloads, payloads that belong to no reservation and no complete checkpoint, and
        (per backend) ``.partial`` files or orphaned GridFS chunks. Complete checkpoints and
        live uploads are never touched; a reservation that shows a heartbeat after the scan
        is kept.

        ``older_than`` must be at least the store's ``stale_after``: a live upload's heartbeat
        may be up to ``stale_after / 4`` seconds old, so a shorter horizon could take a slow
        writer for a dead one.

        Returns:
            A :class:`GarbageReport` (with ``dry_run``: what would go; nothing is deleted).

        Raises:
            TypeError: ``older_than`` is not a number.
            ValueError: ``older_than`` is not finite or is smaller than ``stale_after``.
        """
        if isinstance(older_than, bool) or not isinstance(older_than, (int, float)):
            raise TypeError(f"older_than must be a number of seconds, got {type(older_than).__name__}")
        if not math.isfinite(older_than):
            raise ValueError(f"older_than must be a finite number of seconds, got {older_than}")
        if older_than < self.stale_after:
            raise ValueError(
                f"older_than must be at least the store's stale_after ({self.stale_after:g} s), "
                f"got {older_than:g} s: a younger upload may still be alive"
            )
        if not dry_run:
            self._require_writable("collecting garbage")
        cutoff = (time.time() if now is None else now) - older_than
        self._retry_failed_drops()
        found = self._find_garbage(cutoff)
        if dry_run:
            return GarbageReport(tuple(found), dry_run=True)
        removed = tuple(item for item in found if self._remove_garbage(item, cutoff))
        for item in removed:
            logger.info("garbage collected %s", item)
        return GarbageReport(removed, dry_run=False)

    def _remove_garbage(self, item: GarbageItem, cutoff: float) -> bool:
        """Delete one item found by :meth:`_find_garbage`; return whether it was removed.

        A stale reservation is dropped first (only if still abandoned), so its payloads are
        deleted only once no writer can commit them. Any other item counts as removed only if
        something of it was still there to delete (a ``.partial`` file renamed into a
        committed checkpoint since the scan was not).
        """
        if item.kind == STALE_RESERVATION:
            if not self._drop_stale_reservation(item, cutoff):
                return False
            for location in item.payloads:
                self._delete_payload(location)
            return True
        return any([self._delete_payload(location) for location in item.payloads])

    @abstractmethod
    def _find_garbage(self, cutoff: float) -> list[GarbageItem]:
        """Scan payload storage, then the catalog (in that order, so a payload written during
        the scan is seen with its reservation); return the garbage, given that heartbeats
        older than ``cutoff`` (POSIX time) are stale. Deletes nothing."""

    @abstractmethod
    def _drop_stale_reservation(self, item: GarbageItem, cutoff: float) -> bool:
        """Drop the upload claim ``(item.run, item.iteration, item.token)`` (a pending
        reservation, or a replacement on a stored checkpoint) if it is still abandoned
        (:func:`claim_abandoned` with ``cutoff``); return whether it was dropped."""
