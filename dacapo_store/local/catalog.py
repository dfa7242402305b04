"""The local backend's embedded catalog: one SQLite database beside the payload files.

It holds the checkpoint catalog, validation scores and training statistics, so that "latest"
and "best" are single indexed SQL queries. Connections are per thread and per process; writes
run in ``BEGIN IMMEDIATE`` transactions with a busy timeout, so several processes may write
at once. WAL journaling keeps the database consistent across any crash. A *durable*
transaction (the default: commits, removals, scores) runs with ``synchronous=FULL`` and
survives a power loss once it returns. A non-durable one (``transaction(durable=False)``: a
writer's reservation, heartbeat or abandon) runs with ``synchronous=NORMAL``: it is visible to
every process at once and survives a crash of its process, but not necessarily a power loss;
the next durable commit syncs it with itself (the WAL is one file written in order). That is
all a reservation needs: it only matters while its writer lives, and a power loss ends the
writer too (what it wrote is then an orphan that ``collect_garbage`` reclaims).

A catalog opened read-only (asked for, or a directory this user may not write) uses SQLite's
``mode=ro``; where that cannot open the database (a WAL database needs its ``-shm`` file, which
a reader cannot create in a read-only directory) it falls back to ``immutable=1``, which reads
the database file alone: safe there, since nothing can be writing to a directory nobody may
write (a live writer keeps a ``-shm`` file, with which ``mode=ro`` works).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import NotAuthorizedError, ReadOnlyStoreError, StoreNotFoundError
from ..records import CheckpointInfo, PartInfo

logger = logging.getLogger(__name__)

CATALOG_FILENAME = "catalog.sqlite3"
BUSY_TIMEOUT_SECONDS = 60.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS checkpoints (
        run TEXT NOT NULL,
        iteration INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'complete')),
        token TEXT NOT NULL,
        created REAL NOT NULL,
        heartbeat REAL NOT NULL,
        parts TEXT,
        owner TEXT,
        replacement_token TEXT,
        replacement_heartbeat REAL,
        replacement_owner TEXT,
        PRIMARY KEY (run, iteration)
    )""",
    "CREATE INDEX IF NOT EXISTS checkpoints_by_state ON checkpoints (run, state, iteration)",
    """CREATE TABLE IF NOT EXISTS validation_scores (
        run TEXT NOT NULL,
        dataset TEXT NOT NULL,
        criterion TEXT NOT NULL,
        iteration INTEGER NOT NULL,
        parameters TEXT NOT NULL,
        value REAL,
        higher_is_better INTEGER NOT NULL,
        rank REAL,
        PRIMARY KEY (run, dataset, criterion, iteration, parameters)
    )""",
    """CREATE INDEX IF NOT EXISTS validation_scores_best
        ON validation_scores (run, dataset, criterion, rank DESC, iteration, parameters)
        WHERE rank IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS training_stats (
        run TEXT NOT NULL,
        iteration INTEGER NOT NULL,
        loss REAL,
        time REAL,
        PRIMARY KEY (run, iteration)
    )""",
)

_ADDED_COLUMNS = {
    "checkpoints": (
        ("owner", "TEXT"),
        ("replacement_token", "TEXT"),
        ("replacement_heartbeat", "REAL"),
        ("replacement_owner", "TEXT"),
    ),
}
"""Columns added since the first catalog version, added to older catalogs when they are opened:
an upload's owner (JSON of :func:`~dacapo_store.owner.current_owner`) and the claim of an
upload replacing a stored checkpoint (token, heartbeat, owner)."""

BEST_SCORE_SQL = (
    "SELECT * FROM validation_scores"
    " WHERE run = ? AND dataset = ? AND criterion = ? AND rank IS NOT NULL"
    " ORDER BY rank DESC, iteration ASC, parameters ASC LIMIT 1"
)
"""The one query behind ``retrieve_best`` and ``best_validation_score`` (uses the partial index)."""

ALL_BEST_SCORES_SQL = (
    "SELECT * FROM (SELECT *, ROW_NUMBER() OVER ("
    " PARTITION BY run, dataset, criterion ORDER BY rank DESC, iteration ASC, parameters ASC) AS position"
    " FROM validation_scores WHERE rank IS NOT NULL)"
    " WHERE position = 1 ORDER BY run, dataset, criterion"
)
"""The best score of every (run, dataset, criterion), by :data:`BEST_SCORE_SQL`'s order, in one
query (one pass in the order of the partial index)."""

RUN_TOTALS_SQL = (
    "SELECT run, COUNT(*) AS checkpoints, MAX(iteration) AS latest_iteration,"
    " TOTAL((SELECT TOTAL(json_extract(part.value, '$.size')) FROM json_each(parts) AS part)) AS bytes,"
    " MAX(created) AS last_stored"
    " FROM checkpoints WHERE state = 'complete' GROUP BY run ORDER BY run"
)
"""Every run's complete checkpoints: count, latest iteration, payload bytes, newest ``created``."""


def is_writable(path: Path) -> bool:
    """Whether this process may create and change files in directory ``path`` (and its catalog,
    if there is one): false on a read-only mount, also for root."""
    catalog = path / CATALOG_FILENAME
    return os.access(path, os.W_OK | os.X_OK) and (not catalog.exists() or os.access(catalog, os.W_OK))


class Catalog:
    """The SQLite catalog of one local store directory.

    Args:
        basedir: the store directory; opened for writing, it is created with its catalog if
            missing.
        read_only: open for reading only. A directory this process may not write is opened
            read-only whatever this says.

    Raises:
        StoreNotFoundError: opened read-only, and ``basedir`` or its catalog does not exist
            (only a write creates a store).
    """

    def __init__(self, basedir: str | os.PathLike, read_only: bool = False) -> None:
        self.basedir = Path(basedir).expanduser().absolute()
        self.path = self.basedir / CATALOG_FILENAME
        self._local = threading.local()
        if not read_only and (not self.basedir.exists() or is_writable(self.basedir)):
            self.read_only_reason: str | None = None
            self.basedir.mkdir(parents=True, exist_ok=True)
            with self.transaction() as db:
                for statement in _SCHEMA:
                    db.execute(statement)
                _add_missing_columns(db)
            return
        self.read_only_reason = "opened read-only" if read_only else "not writable by this user"
        if not self.path.exists():
            what = "does not exist" if not self.basedir.exists() else f"has no {CATALOG_FILENAME}"
            raise StoreNotFoundError(
                f"no store at {self.basedir}: the directory {what} (a store is created by its first write)"
            )
        self._read_only_uri = self._usable_read_only_uri()

    @property
    def read_only(self) -> bool:
        """Whether the catalog was opened read-only (asked for, or an unwritable directory)."""
        return self.read_only_reason is not None

    def _usable_read_only_uri(self) -> str:
        """``mode=ro`` if SQLite can open the database that way here, else ``immutable=1``."""
        base = self.path.as_uri()
        try:
            probe = sqlite3.connect(f"{base}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS)
            try:
                probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return f"{base}?mode=ro"
            finally:
                probe.close()
        except sqlite3.OperationalError:
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                logger.warning(
                    "%s: its write-ahead log cannot be read from this read-only directory; the "
                    "latest changes may be missing until a writer opens the store", self.basedir,
                )
            return f"{base}?immutable=1"

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (a new one in a forked child process)."""
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            if self.read_only:
                db = sqlite3.connect(self._read_only_uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
            else:
                db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            db.row_factory = sqlite3.Row
            self._local.db, self._local.pid, self._local.durable = db, os.getpid(), True
        return db

    def require_writable(self, action: str) -> None:
        """Raise ReadOnlyStoreError if the catalog was opened read-only."""
        if self.read_only:
            raise ReadOnlyStoreError(
                f"the local store at {self.basedir} is {self.read_only_reason}: not authorized to write ({action})"
            )

    @contextmanager
    def transaction(
        self, action: str = "writing the catalog", durable: bool = True
    ) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on error.
        ``durable=False`` commits without waiting for the disk (see the module doc).

        Raises:
            ReadOnlyStoreError: the catalog was opened read-only (nothing is written).
            NotAuthorizedError: SQLite refuses to write (the directory or file became read-only).
        """
        self.require_writable(action)
        db = self.connection()
        if self._local.durable != durable:
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._local.durable = durable
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (a failed COMMIT)
                    db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as error:
            if "readonly" not in str(error):
                raise
            raise NotAuthorizedError(
                f"the local store at {self.basedir} refused a write ({action}): {error}"
            ) from error

    def query(self, sql: str, parameters: tuple = ()) -> list[sqlite3.Row]:
        """Run one read query and return all its rows."""
        return self.connection().execute(sql, parameters).fetchall()


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a catalog made by an earlier version up to :data:`_ADDED_COLUMNS`."""
    for table, columns in _ADDED_COLUMNS.items():
        present = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def checkpoint_from_row(row: sqlite3.Row) -> CheckpointInfo:
    """Build the :class:`CheckpointInfo` of a complete ``checkpoints`` row."""
    parts = {name: PartInfo.from_document(part) for name, part in json.loads(row["parts"]).items()}
    return CheckpointInfo(run=row["run"], iteration=row["iteration"], created=row["created"], parts=parts)


def parts_to_json(parts: dict[str, PartInfo]) -> str:
    """Serialize a checkpoint's parts for the ``parts`` column."""
    return json.dumps({name: part.to_document() for name, part in parts.items()})
