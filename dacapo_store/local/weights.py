"""The local weights store: payload files plus the embedded SQLite catalog."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checks import run_name_of
from ..errors import CheckpointExistsError, NoScoreError
from ..records import CheckpointInfo, PartInfo
from ..serialization import serialize_state
from ..weights_store import (
    DEFAULT_STALE_AFTER,
    GarbageItem,
    Reservation,
    WeightsStore,
    PendingUpload,
    StoredPayload,
    classify_garbage,
    describe,
    reservation_lost,
)
from .payload_file import load_payload_file, verify_payload_file
from .writeback import WritebackFile
from .catalog import BEST_SCORE_SQL, Catalog, checkpoint_from_row, parts_to_json

logger = logging.getLogger(__name__)

PAYLOAD_DIRNAME = "payloads"
PARTIAL_SUFFIX = ".partial"
PAYLOAD_NAME = re.compile(r"^(?P<token>[0-9a-f]{32})\.[a-z]+\.pt(?:\.partial)?$")
"""Names this store gives payload files (``<token>.<part>.pt``, ``.partial`` while written);
garbage collection never touches any other file."""


def fsync_directory(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalWeightsStore(WeightsStore):
    """Checkpoints as files under ``basedir/payloads``, catalogued in ``basedir/catalog.sqlite3``.

    Each part is written to a ``.partial`` file (its disk write started as it goes, see
    :mod:`~dacapo_store.local.writeback`), fsync'd and renamed; the catalog entry is committed
    after. Several processes may share ``basedir``. A :class:`LocalStatsStore` on the
    same ``basedir`` shares the validation scores that :meth:`retrieve_best` reads.

    Args:
        basedir: the store directory (created if missing, unless ``read_only``).
        stale_after: seconds without progress after which a pending upload may be taken over.
        read_only: open for reading only (SQLite ``mode=ro``); writes raise ReadOnlyStoreError.
            A directory this process may not write (a read-only mount, no write permission) is
            opened read-only anyway, and serves every read.

    Raises:
        StoreNotFoundError: opened read-only and there is no store at ``basedir``.
    """

    def __init__(
        self, basedir: str | os.PathLike, stale_after: float = DEFAULT_STALE_AFTER, read_only: bool = False
    ) -> None:
        self.catalog = Catalog(basedir, read_only)
        self.basedir = self.catalog.basedir
        self.payload_dir = self.basedir / PAYLOAD_DIRNAME
        if not self.catalog.read_only:
            self.payload_dir.mkdir(exist_ok=True)
        self.stale_after = stale_after

    def __repr__(self) -> str:
        return f"LocalWeightsStore({str(self.basedir)!r})"

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

    def payload_path(self, location: str) -> Path:
        """The file that holds the payload at ``location``."""
        return self.payload_dir / location

    def _reserve(self, run: str, iteration: int) -> Reservation:
        now = time.time()
        token = uuid.uuid4().hex
        with self.catalog.transaction() as db:
            row = db.execute(
                "SELECT state, heartbeat FROM checkpoints WHERE run = ? AND iteration = ?",
                (run, iteration),
            ).fetchone()
            if row is not None:
                if row["state"] == "complete":
                    raise CheckpointExistsError(f"{describe(run, iteration)} is already stored")
                if row["heartbeat"] > now - self.stale_after:
                    raise CheckpointExistsError(
                        f"{describe(run, iteration)} is being stored by another writer"
                    )
                logger.warning("taking over the stale upload of %s", describe(run, iteration))
                db.execute("DELETE FROM checkpoints WHERE run = ? AND iteration = ?", (run, iteration))
            db.execute(
                "INSERT INTO checkpoints (run, iteration, state, token, created, heartbeat)"
                " VALUES (?, ?, 'pending', ?, ?, ?)",
                (run, iteration, token, now, now),
            )
        return Reservation(run, iteration, token)

    def _heartbeat(self, reservation: Reservation) -> None:
        """Refresh the reservation's heartbeat; ReservationLostError if it was taken over."""
        with self.catalog.transaction() as db:
            updated = db.execute(
                "UPDATE checkpoints SET heartbeat = ? WHERE run = ? AND iteration = ? AND token = ?",
                (time.time(), reservation.run, reservation.iteration, reservation.token),
            ).rowcount
        if updated != 1:
            raise reservation_lost(reservation, "while it was uploading")

    def _write_part(self, reservation: Reservation, part: str, state: Any) -> PartInfo:
        location = f"{reservation.token}.{part}.pt"
        final = self.payload_path(location)
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        reservation.payloads.append(location)
        try:
            with open(partial, "wb") as file:
                info = serialize_state(
                    state,
                    WritebackFile(file).write,
                    location,
                    heartbeat=lambda: self._heartbeat(reservation),
                    heartbeat_every=self.heartbeat_every,
                )
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, final)
            fsync_directory(self.payload_dir)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return info

    def _commit(self, reservation: Reservation, parts: Mapping[str, PartInfo]) -> CheckpointInfo:
        now = time.time()
        with self.catalog.transaction() as db:
            updated = db.execute(
                "UPDATE checkpoints SET state = 'complete', parts = ?, heartbeat = ?"
                " WHERE run = ? AND iteration = ? AND token = ? AND state = 'pending'",
                (parts_to_json(dict(parts)), now, reservation.run, reservation.iteration, reservation.token),
            ).rowcount
            if updated != 1:
                raise reservation_lost(reservation, "before it committed")
            row = db.execute(
                "SELECT * FROM checkpoints WHERE run = ? AND iteration = ?",
                (reservation.run, reservation.iteration),
            ).fetchone()
        return checkpoint_from_row(row)

    def _abandon(self, reservation: Reservation) -> None:
        for location in reservation.payloads:
            final = self.payload_path(location)
            final.with_name(final.name + PARTIAL_SUFFIX).unlink(missing_ok=True)
            final.unlink(missing_ok=True)
        with self.catalog.transaction() as db:
            db.execute(
                "DELETE FROM checkpoints WHERE run = ? AND iteration = ? AND token = ? AND state = 'pending'",
                (reservation.run, reservation.iteration, reservation.token),
            )

    def _find(self, run: str, iteration: int) -> CheckpointInfo | None:
        rows = self.catalog.query(
            "SELECT * FROM checkpoints WHERE run = ? AND iteration = ? AND state = 'complete'",
            (run, iteration),
        )
        return checkpoint_from_row(rows[0]) if rows else None

    def _load_part(self, info: CheckpointInfo, part: str, map_location: Any) -> Any:
        expected = info.parts[part]
        return load_payload_file(
            self.payload_path(expected.location), expected, map_location, describe(info.run, info.iteration, part)
        )

    def _verify_part(self, info: CheckpointInfo, part: str) -> None:
        expected = info.parts[part]
        verify_payload_file(self.payload_path(expected.location), expected, describe(info.run, info.iteration, part))

    def _unlist(self, run: str, iteration: int) -> CheckpointInfo | None:
        with self.catalog.transaction() as db:
            row = db.execute(
                "SELECT * FROM checkpoints WHERE run = ? AND iteration = ? AND state = 'complete'",
                (run, iteration),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM checkpoints WHERE run = ? AND iteration = ?", (run, iteration))
        return checkpoint_from_row(row)

    def _delete_payload(self, location: str) -> None:
        self.catalog.require_writable(f"deleting payload {location}")
        self.payload_path(location).unlink(missing_ok=True)

    def _latest_iteration(self, run: str) -> int | None:
        rows = self.catalog.query(
            "SELECT iteration FROM checkpoints WHERE run = ? AND state = 'complete'"
            " ORDER BY iteration DESC LIMIT 1",
            (run,),
        )
        return rows[0]["iteration"] if rows else None

    def _best_iteration(self, run: str, dataset: str, criterion: str) -> int:
        rows = self.catalog.query(BEST_SCORE_SQL, (run, dataset, criterion))
        if not rows:
            raise NoScoreError.for_query(run, dataset, criterion)
        return rows[0]["iteration"]

    def _find_garbage(self, cutoff: float) -> list[GarbageItem]:
        files = self._payload_files()
        rows = self.catalog.query("SELECT * FROM checkpoints")
        referenced = {
            part.location for row in rows if row["state"] == "complete"
            for part in checkpoint_from_row(row).parts.values()
        }
        pending = [
            PendingUpload(row["token"], row["run"], row["iteration"], row["heartbeat"])
            for row in rows if row["state"] == "pending"
        ]
        payloads = [
            StoredPayload(name, PAYLOAD_NAME.match(name)["token"], size, name.endswith(PARTIAL_SUFFIX))
            for name, size in files.items()
        ]
        return classify_garbage(payloads, referenced, pending, cutoff)

    def _payload_files(self) -> dict[str, int]:
        """Name -> size of every payload file (finished or ``.partial``) in the payload directory."""
        files = {}
        if not self.payload_dir.is_dir():  # a read-only store that never held a checkpoint
            return files
        for entry in os.scandir(self.payload_dir):
            if PAYLOAD_NAME.match(entry.name):
                try:
                    files[entry.name] = entry.stat().st_size
                except FileNotFoundError:  # deleted since the listing
                    pass
        return files

    def _drop_stale_reservation(self, item: GarbageItem, cutoff: float) -> bool:
        with self.catalog.transaction() as db:
            return db.execute(
                "DELETE FROM checkpoints WHERE run = ? AND iteration = ? AND token = ?"
                " AND state = 'pending' AND heartbeat < ?",
                (item.run, item.iteration, item.token, cutoff),
            ).rowcount == 1
