"""Garbage collection's classification, the same for every backend: what a scan of the payload
storage found (:class:`StoredPayload`), what goes (:class:`GarbageItem`, by kind) and the
report (:class:`GarbageReport`). The backends scan and delete; :func:`classify_garbage`
decides."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._reservations import PendingUpload, describe

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
