"""The local backend's embedded catalog: one SQLite database beside the payload files.

It holds the checkpoint catalog, validation scores and training statistics, so that "latest"
and "best" are single indexed SQL queries. Connections are per thread and per process; writes
run in ``BEGIN IMMEDIATE`` transactions with a busy timeout, so several processes may write
at once; WAL journaling with ``synchronous=FULL`` keeps every committed write across a crash.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..records import CheckpointInfo, PartInfo

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


class Catalog:
    """The SQLite catalog of one local store directory (created on first use)."""

    def __init__(self, basedir: str | os.PathLike) -> None:
        self.basedir = Path(basedir).expanduser()
        self.basedir.mkdir(parents=True, exist_ok=True)
        self.path = self.basedir / CATALOG_FILENAME
        self._local = threading.local()
        with self.transaction() as db:
            for statement in _SCHEMA:
                db.execute(statement)
            _add_missing_columns(db)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (a new one in a forked child process)."""
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on error."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back already (a failed COMMIT)
                db.execute("ROLLBACK")
            raise

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
