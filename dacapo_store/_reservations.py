"""The reservation protocol's records, shared by every backend: a writer's claim on
``(run, iteration)`` (:class:`Reservation`), a claim as the catalog holds it
(:class:`PendingUpload`), and when a claim may be taken over (:func:`claim_abandoned`). The
protocol itself is described in :mod:`dacapo_store.weights_store`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .errors import ReservationLostError
from .owner import current_owner, owner_is_dead, upload_started
from .records import CheckpointInfo

DEFAULT_STALE_AFTER = 600.0
"""Seconds without a heartbeat after which a pending upload counts as abandoned."""


@dataclass
class Reservation:
    """A writer's claim on ``(run, iteration)``; ``payloads`` lists what it has written so far.

    ``replaces`` is the stored checkpoint this upload replaces (``overwrite=True``), else
    ``None``; ``owner`` is the writer's :func:`~dacapo_store.owner.current_owner` record.
    """

    run: str
    iteration: int
    token: str
    payloads: list[str] = field(default_factory=list)
    replaces: CheckpointInfo | None = None
    owner: dict[str, Any] = field(default_factory=current_owner)

    @classmethod
    def new(cls, run: str, iteration: int) -> "Reservation":
        """A reservation with a fresh token, recorded as an upload this process runs until
        :func:`~dacapo_store.owner.upload_ended` (so that it is never judged abandoned while
        this process may still write it)."""
        reservation = cls(run, iteration, uuid.uuid4().hex)
        upload_started(reservation.token)
        return reservation


def claim_abandoned(heartbeat: float, owner: Any, token: str, cutoff: float) -> bool:
    """Whether an upload's claim may be taken over: its heartbeat is older than ``cutoff``
    (POSIX time) or its owner is verifiably dead (:func:`~dacapo_store.owner.owner_is_dead`)."""
    return heartbeat < cutoff or owner_is_dead(owner, token)


@dataclass(frozen=True)
class PendingUpload:
    """An upload's claim in the catalog (a pending reservation, or a replacement of a stored
    checkpoint): whose upload it is, when it last beat, and the writer who owns it."""

    token: str
    run: str
    iteration: int
    heartbeat: float
    owner: Any = None

    def abandoned(self, cutoff: float) -> bool:
        """Whether the claim may be taken over (see :func:`claim_abandoned`)."""
        return claim_abandoned(self.heartbeat, self.owner, self.token, cutoff)


def reservation_lost(reservation: Reservation, when: str) -> ReservationLostError:
    """The error of a writer whose reservation another writer took over (judged stale)."""
    return ReservationLostError(
        f"the upload of {describe(reservation.run, reservation.iteration)} was taken over by "
        f"another writer (it was judged stale) {when}"
    )


def describe(run: str, iteration: int, part: str | None = None) -> str:
    """Human-readable name of a checkpoint (or one of its parts) for error messages."""
    where = f"checkpoint {iteration} of run {run!r}"
    return f"{where} ({part} part)" if part else where
