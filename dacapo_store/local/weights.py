"""The local weights store: payload files plus the embedded SQLite catalog."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checks import run_name_of
from ..errors import CheckpointExistsError, CheckpointNotFoundError, CorruptCheckpointError
from ..records import CheckpointInfo, PartInfo, RunTotals
from .. import payload_store
from ..payload_store import PayloadStore
from ..weights_store import (
    DEFAULT_STALE_AFTER,
    GarbageItem,
    Reservation,
    WeightsStore,
    PendingUpload,
    StoredPayload,
    claim_abandoned,
    classify_garbage,
    describe,
    reservation_lost,
)
from .payloads import FilePayloads
from .catalog import RUN_TOTALS_SQL, Catalog, checkpoint_from_row, parts_to_json
from .scores import LocalScoreCatalog

logger = logging.getLogger(__name__)

WRITE_SLICE_BYTES = 1024 * 1024
"""Payload bytes written (then hashed, while still in the CPU cache) at a time."""
PAYLOAD_DIRNAME = "payloads"
PARTIAL_SUFFIX = payload_store.PARTIAL_SUFFIX
PAYLOAD_NAME = re.compile(r"^(?P<token>[0-9a-f]{32})\.[a-z]+\.pt(?:\.partial)?$")
"""Names this store gives payload files (``<token>.<part>.pt``, ``.partial`` while written);
garbage collection never touches any other file."""
PAYLOAD_LOCATION = re.compile(r"^[0-9a-f]{32}\.[a-z]+\.pt$")
"""The locations the catalog may record: a finished payload's file name, nothing else (no
directory part, no ``..``): a tampered catalog cannot make the store read or delete a file
outside ``payloads/``."""


class LocalWeightsStore(WeightsStore):
    """Checkpoints as files under ``basedir/payloads``, catalogued in ``basedir/catalog.sqlite3``.

    Each part is written to a ``.partial`` file (its disk write started as it goes, see
    :mod:`~dacapo_store.local.writeback`) and renamed; just before the catalog entry is
    committed, every payload file is synced once and the payload directory once (a store makes
    one data sync per payload, one directory sync and one durable catalog commit; the
    reservation is not synced, see :mod:`~dacapo_store.local.catalog`). Several processes may share ``basedir``. A :class:`LocalStatsStore` on the
    same ``basedir`` shares the validation scores that :meth:`retrieve_best` reads.

    Args:
        basedir: the store directory (created by the first write if missing, unless
            ``read_only``; reads of a store that does not exist create nothing, and a lookup
            that finds nothing says the store is missing).
        stale_after: seconds without progress after which a pending upload may be taken over.
        read_only: open for reading only (SQLite ``mode=ro``); writes raise ReadOnlyStoreError.
            A directory this process may not write (a read-only mount, no write permission) is
            opened read-only anyway, and serves every read.
        payloads: where the payloads live (default: files under ``basedir/payloads``); the
            catalog stays in ``basedir``.

    Raises:
        StoreNotFoundError: opened read-only and there is no store at ``basedir``.
    """

    def __init__(
        self,
        basedir: str | os.PathLike,
        stale_after: float = DEFAULT_STALE_AFTER,
        read_only: bool = False,
        payloads: PayloadStore | None = None,
    ) -> None:
        super().__init__(stale_after)
        self.catalog = Catalog.of(basedir, read_only)
        self.basedir = self.catalog.basedir
        self.score_catalog = LocalScoreCatalog(self.catalog)
        self.payload_dir = self.basedir / PAYLOAD_DIRNAME
        if payloads is None:
            payloads = FilePayloads(self.payload_dir, map_for_copies=self.catalog.network_filesystem is None)
        self.payloads = payloads
        """Where the payloads live (files in :attr:`payload_dir` unless another
        :class:`~dacapo_store.payload_store.PayloadStore` is given)."""

    def __repr__(self) -> str:
        return f"LocalWeightsStore({str(self.basedir)!r})"

    def _require_writable(self, action: str) -> None:
        self.catalog.require_writable(action)

    def list_checkpoints(self, run: Any) -> list[CheckpointInfo]:
        rows = self.catalog.query(
            "SELECT * FROM checkpoints WHERE run = ? AND state = 'complete' ORDER BY iteration",
            (run_name_of(run),),
        )
        return [checkpoint_from_row(row) for row in rows]

    def list_runs(self) -> list[str]:
        rows = self.catalog.query(
            "SELECT DISTINCT run FROM checkpoints WHERE state = 'complete' ORDER BY run"
        )
        return [row["run"] for row in rows]

    def run_totals(self) -> list[RunTotals]:
        rows = self.catalog.query(RUN_TOTALS_SQL)
        return [
            RunTotals(row["run"], row["checkpoints"], row["latest_iteration"], int(row["bytes"]), row["last_stored"])
            for row in rows
        ]

    def payload_path(self, location: str, where: str = "a checkpoint") -> Path:
        """The file that holds the payload at ``location`` (of ``where``, for messages), where
        payloads are files.

        Raises:
            CorruptCheckpointError: ``location`` is not a payload file name this store gives
                (see :data:`PAYLOAD_LOCATION`).
        """
        return self.payload_dir / self._checked_location(location, where)

    def _checked_location(self, location: str, where: str) -> str:
        """``location`` if the catalog may record it (see :data:`PAYLOAD_LOCATION`), else
        CorruptCheckpointError."""
        if not isinstance(location, str) or not PAYLOAD_LOCATION.match(location):
            raise CorruptCheckpointError(
                f"{where}: the catalog records an invalid payload location {location!r} (not a "
                f"payload file name inside {self.payload_dir})"
            )
        return location

    def _reserve(self, reservation: Reservation, replace: bool) -> None:
        now = time.time()
        run, iteration = reservation.run, reservation.iteration
        owner = json.dumps(reservation.owner)
        with self.catalog.transaction(durable=False) as db:
            row = db.execute(
                "SELECT * FROM checkpoints WHERE run = ? AND iteration = ?", (run, iteration)
            ).fetchone()
            if row is not None and row["state"] == "complete":
                if not replace:
                    raise CheckpointExistsError(f"{describe(run, iteration)} is already stored")
                if row["replacement_token"] is not None:
                    if not claim_abandoned(
                        row["replacement_heartbeat"], _owner(row["replacement_owner"]),
                        row["replacement_token"], now - self.stale_after,
                    ):
                        raise CheckpointExistsError(f"{describe(run, iteration)} is being replaced by another writer")
                    logger.warning("taking over the abandoned replacement of %s", describe(run, iteration))
                db.execute(
                    "UPDATE checkpoints SET replacement_token = ?, replacement_heartbeat = ?,"
                    " replacement_owner = ? WHERE run = ? AND iteration = ?",
                    (reservation.token, now, owner, run, iteration),
                )
                reservation.replaces = checkpoint_from_row(row)
                return
            if row is not None:
                if not claim_abandoned(row["heartbeat"], _owner(row["owner"]), row["token"], now - self.stale_after):
                    raise CheckpointExistsError(
                        f"{describe(run, iteration)} is being stored by another writer"
                    )
                logger.warning("taking over the abandoned upload of %s", describe(run, iteration))
                db.execute("DELETE FROM checkpoints WHERE run = ? AND iteration = ?", (run, iteration))
            db.execute(
                "INSERT INTO checkpoints (run, iteration, state, token, created, heartbeat, owner)"
                " VALUES (?, ?, 'pending', ?, ?, ?, ?)",
                (run, iteration, reservation.token, now, now, owner),
            )

    def _heartbeat(self, reservation: Reservation) -> None:
        """Refresh the reservation's heartbeat; ReservationLostError if it was taken over. A
        replacement claim that a remove turned into a pending reservation is refreshed as one
        (and ``reservation.replaces`` becomes ``None``)."""
        with self.catalog.transaction(durable=False) as db:
            key = (reservation.run, reservation.iteration, reservation.token)
            if reservation.replaces is not None and db.execute(
                "UPDATE checkpoints SET replacement_heartbeat = ? WHERE run = ? AND iteration = ?"
                " AND replacement_token = ?",
                (time.time(), *key),
            ).rowcount:
                return
            updated = db.execute(
                "UPDATE checkpoints SET heartbeat = ? WHERE run = ? AND iteration = ? AND token = ?"
                " AND state = 'pending'",
                (time.time(), *key),
            ).rowcount
        if updated != 1:
            raise reservation_lost(reservation, "while it was uploading")
        reservation.replaces = None

    def _write_part(self, reservation: Reservation, part: str, state: Any) -> PartInfo:
        location = f"{reservation.token}.{part}.pt"
        reservation.payloads.append(location)
        return self.payloads.write(location, self._serializing(reservation, state, location, WRITE_SLICE_BYTES))

    def _sync_payloads(self, reservation: Reservation) -> None:
        """Make the reservation's payloads durable (for files: one data sync per file, then one
        sync of the payload directory). Syncing here, just before the commit, rather than after
        each part lets the disk write one part while the next is serialized."""
        self.payloads.make_durable(
            [self._checked_location(location, "a new checkpoint") for location in reservation.payloads]
        )

    def _commit(self, reservation: Reservation, parts: Mapping[str, PartInfo]) -> CheckpointInfo:
        self._sync_payloads(reservation)
        now = time.time()
        with self.catalog.transaction() as db:
            updated = 0
            if reservation.replaces is not None:
                updated = db.execute(
                    "UPDATE checkpoints SET parts = ?, token = ?, created = ?, heartbeat = ?, owner = ?,"
                    " replacement_token = NULL, replacement_heartbeat = NULL, replacement_owner = NULL"
                    " WHERE run = ? AND iteration = ? AND replacement_token = ? AND state = 'complete'",
                    (
                        parts_to_json(dict(parts)), reservation.token, now, now, json.dumps(reservation.owner),
                        reservation.run, reservation.iteration, reservation.token,
                    ),
                ).rowcount
            if not updated:  # a plain store, or a replacement whose checkpoint was removed
                updated = db.execute(
                    "UPDATE checkpoints SET state = 'complete', parts = ?, heartbeat = ?"
                    " WHERE run = ? AND iteration = ? AND token = ? AND state = 'pending'",
                    (parts_to_json(dict(parts)), now, reservation.run, reservation.iteration, reservation.token),
                ).rowcount
                if updated and reservation.replaces is not None:
                    reservation.replaces = None  # its payloads went with the remove
            if updated != 1:
                raise reservation_lost(reservation, "before it committed")
            row = db.execute(
                "SELECT * FROM checkpoints WHERE run = ? AND iteration = ?",
                (reservation.run, reservation.iteration),
            ).fetchone()
        return checkpoint_from_row(row)

    def _abandon(self, reservation: Reservation) -> None:
        for location in reservation.payloads:
            self.payloads.discard(location)
        with self.catalog.transaction(durable=False) as db:
            _drop_claim(db, reservation.run, reservation.iteration, reservation.token)

    def _find(self, run: str, iteration: int) -> CheckpointInfo | None:
        """The complete checkpoint's entry, or ``None``.

        Raises:
            CheckpointNotFoundError: the store does not exist (the message says so).
        """
        if not self.catalog.exists():
            raise CheckpointNotFoundError(f"no {describe(run, iteration)} is stored: {self.catalog.missing()}")
        rows = self.catalog.query(
            "SELECT * FROM checkpoints WHERE run = ? AND iteration = ? AND state = 'complete'",
            (run, iteration),
        )
        return checkpoint_from_row(rows[0]) if rows else None

    def _load_part(self, info: CheckpointInfo, part: str, map_location: Any, mmap: bool = False) -> Any:
        expected = info.parts[part]
        where = describe(info.run, info.iteration, part)
        self._checked_location(expected.location, where)
        return self.payloads.load(expected, map_location, where, mmap)

    def _loads_copies_concurrently(self) -> bool:
        """Where payload files are mapped for copies, one thread per part: a warm 300 MB load
        into a model and Adam took 29 ms instead of 34 (two cores)."""
        return isinstance(self.payloads, FilePayloads) and self.payloads.map_for_copies

    def _load_part_to_copy(self, info: CheckpointInfo, part: str) -> Any:
        expected = info.parts[part]
        where = describe(info.run, info.iteration, part)
        self._checked_location(expected.location, where)
        return self.payloads.load_to_copy(expected, where)

    def _verify_part(self, info: CheckpointInfo, part: str) -> None:
        expected = info.parts[part]
        where = describe(info.run, info.iteration, part)
        self._checked_location(expected.location, where)
        self.payloads.verify(expected, where)

    def _unlist(self, run: str, iteration: int) -> CheckpointInfo | None:
        with self.catalog.transaction() as db:
            row = db.execute(
                "SELECT * FROM checkpoints WHERE run = ? AND iteration = ? AND state = 'complete'",
                (run, iteration),
            ).fetchone()
            if row is None:
                return None
            replacement = _claim(row)
            if replacement is not None and not replacement.abandoned(time.time() - self.stale_after):
                db.execute(  # the live overwrite goes on as a plain store
                    "UPDATE checkpoints SET state = 'pending', parts = NULL, token = replacement_token,"
                    " created = ?, heartbeat = replacement_heartbeat, owner = replacement_owner,"
                    " replacement_token = NULL, replacement_heartbeat = NULL, replacement_owner = NULL"
                    " WHERE run = ? AND iteration = ?",
                    (time.time(), run, iteration),
                )
            else:
                db.execute("DELETE FROM checkpoints WHERE run = ? AND iteration = ?", (run, iteration))
        return checkpoint_from_row(row)

    def _delete_payload(self, location: str) -> bool:
        """Delete the payload file ``location`` (finished or ``.partial``: any name of
        :data:`PAYLOAD_NAME`, never a path outside ``payloads/``)."""
        self.catalog.require_writable(f"deleting payload {location}")
        if not isinstance(location, str) or not PAYLOAD_NAME.match(location):
            raise CorruptCheckpointError(f"refusing to delete {location!r}: not a payload file name")
        return self.payloads.delete(location)

    def _latest_iteration(self, run: str) -> int | None:
        rows = self.catalog.query(
            "SELECT iteration FROM checkpoints WHERE run = ? AND state = 'complete'"
            " ORDER BY iteration DESC LIMIT 1",
            (run,),
        )
        return rows[0]["iteration"] if rows else None

    def _find_garbage(self, cutoff: float) -> list[GarbageItem]:
        files = self._payload_files()
        rows = self.catalog.query("SELECT * FROM checkpoints")
        referenced = {
            part.location for row in rows if row["state"] == "complete"
            for part in checkpoint_from_row(row).parts.values()
        }
        payloads = [
            StoredPayload(name, PAYLOAD_NAME.match(name)["token"], size, name.endswith(PARTIAL_SUFFIX))
            for name, size in files.items()
        ]
        claims = [claim for claim in map(_claim, rows) if claim is not None]
        return classify_garbage(payloads, referenced, claims, cutoff)

    def _payload_files(self) -> dict[str, int]:
        """Name -> size of every payload (finished or ``.partial``) named as this store names
        them (:data:`PAYLOAD_NAME`; garbage collection never touches anything else)."""
        return {name: size for name, size in self.payloads.list().items() if PAYLOAD_NAME.match(name)}

    def _drop_stale_reservation(self, item: GarbageItem, cutoff: float) -> bool:
        with self.catalog.transaction() as db:
            row = db.execute(
                "SELECT * FROM checkpoints WHERE run = ? AND iteration = ?"
                " AND ((token = ? AND state = 'pending') OR replacement_token = ?)",
                (item.run, item.iteration, item.token, item.token),
            ).fetchone()
            claim = None if row is None else _claim(row)
            if claim is None or claim.token != item.token or not claim.abandoned(cutoff):
                return False
            return _drop_claim(db, item.run, item.iteration, item.token)


def _owner(text: str | None) -> Any:
    """The owner record stored as JSON (``None`` when not recorded)."""
    return None if text is None else json.loads(text)


def _claim(row: sqlite3.Row) -> PendingUpload | None:
    """The upload claim a catalog row holds: its pending reservation, or the replacement
    claim on a stored checkpoint; ``None`` for a stored checkpoint nobody replaces."""
    if row["state"] == "pending":
        return PendingUpload(row["token"], row["run"], row["iteration"], row["heartbeat"], _owner(row["owner"]))
    if row["replacement_token"] is not None:
        return PendingUpload(
            row["replacement_token"], row["run"], row["iteration"],
            row["replacement_heartbeat"], _owner(row["replacement_owner"]),
        )
    return None


def _drop_claim(db: sqlite3.Connection, run: str, iteration: int, token: str) -> bool:
    """Drop the upload claim ``token`` on ``(run, iteration)``: delete its pending entry, or
    clear its replacement claim on the stored checkpoint; return whether there was one."""
    deleted = db.execute(
        "DELETE FROM checkpoints WHERE run = ? AND iteration = ? AND token = ? AND state = 'pending'",
        (run, iteration, token),
    ).rowcount
    cleared = db.execute(
        "UPDATE checkpoints SET replacement_token = NULL, replacement_heartbeat = NULL,"
        " replacement_owner = NULL WHERE run = ? AND iteration = ? AND replacement_token = ?",
        (run, iteration, token),
    ).rowcount
    return deleted + cleared > 0
