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
``mode=ro``. Where that cannot open the database (a WAL database whose writers have all closed:
its ``-shm`` file is gone, and a reader cannot create one in a directory it may not write), it
reads the database file alone (``immutable=1``) only if the file really cannot change: a
read-only mount, or the immutable attribute (``chattr +i``). Elsewhere its owner (or root) could
start writing during the read, which ``immutable=1`` would not notice; that is refused with
:class:`NotAuthorizedError` saying what to do.

**Network filesystems** (NFS, SMB, Lustre, GPFS, BeeGFS, CephFS, ...: see
:mod:`~dacapo_store.local.filesystems`). SQLite's WAL needs every connection on one host, and
its rollback journal needs file locks that work across hosts, which these filesystems do not
all give. There a store is opened for reading only (never in WAL mode) and every write is
refused with a one-line error pointing to MongoDB, unless ``$DACAPO_STORE_NETWORK_FS`` is
``rollback-journal``: then the catalog runs in rollback-journal mode (``journal_mode=DELETE``,
``synchronous=FULL`` for every transaction), which keeps it consistent as long as the
filesystem's locks do (NFSv4, Lustre with ``flock``, GPFS, CephFS); the user accepts that risk.

A store opened for writing is created by its first write: until then its reads find nothing and
create nothing, so a mistyped path does not leave an empty store behind.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import (
    ConfigurationError,
    NoScoreError,
    NotAuthorizedError,
    ReadOnlyStoreError,
    StoreConnectionError,
    StoreNotFoundError,
)
from ..records import CheckpointInfo, PartInfo
from . import filesystems

logger = logging.getLogger(__name__)

CATALOG_FILENAME = "catalog.sqlite3"
BUSY_TIMEOUT_SECONDS = 60.0
NETWORK_FS_ENV = "DACAPO_STORE_NETWORK_FS"
NETWORK_FS_OPT_IN = "rollback-journal"
"""The value of ``$DACAPO_STORE_NETWORK_FS`` that lets a store on a network filesystem write
(rollback-journal mode, no WAL), accepting that the filesystem's locks must work across hosts."""

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


def network_fs_opted_in() -> bool:
    """Whether ``$DACAPO_STORE_NETWORK_FS`` lets a store on a network filesystem write.

    Raises:
        ConfigurationError: the variable is set to anything but ``rollback-journal``.
    """
    value = os.environ.get(NETWORK_FS_ENV, "")
    if value not in ("", NETWORK_FS_OPT_IN):
        raise ConfigurationError(
            f"${NETWORK_FS_ENV} must be {NETWORK_FS_OPT_IN!r} (or unset), got {value!r}"
        )
    return value == NETWORK_FS_OPT_IN


class Catalog:
    """The SQLite catalog of one local store directory.

    Args:
        basedir: the store directory; opened for writing, it is created with its catalog by
            the first write (reads of a store that does not exist yet find nothing).
        read_only: open for reading only. A directory this process may not write, or one on a
            network filesystem (without ``$DACAPO_STORE_NETWORK_FS``), is opened read-only
            whatever this says.

    Raises:
        StoreNotFoundError: opened read-only, and ``basedir`` or its catalog does not exist
            (only a write creates a store).
        ConfigurationError: a bad ``$DACAPO_STORE_NETWORK_FS``.
    """

    def __init__(self, basedir: str | os.PathLike, read_only: bool = False) -> None:
        self.basedir = Path(basedir).expanduser().absolute()
        self.path = self.basedir / CATALOG_FILENAME
        self._local = threading.local()
        self._read_only_uri: str | None = None
        self.network_filesystem = filesystems.network_filesystem(self.basedir)
        network_writes = self.network_filesystem is not None and network_fs_opted_in()
        self.journal_mode = "delete" if network_writes else "wal"
        self.read_only_reason: str | None = None
        if read_only:
            self.read_only_reason = "opened read-only"
        elif self.network_filesystem is not None and not network_writes:
            self.read_only_reason = f"on a network filesystem ({self.network_filesystem})"
        elif self.basedir.exists() and not is_writable(self.basedir):
            self.read_only_reason = "not writable by this user"
        self._present = self.path.exists()
        self._schema_ready = False
        self._create_lock = threading.Lock()
        if self.read_only_reason is None:
            if self._present:
                self._create()  # brings an older catalog's schema up to date
            return
        if not self._present and (read_only or self.network_filesystem is None):
            raise StoreNotFoundError(self.missing())

    @classmethod
    def of(cls, basedir: "str | os.PathLike | Catalog", read_only: bool = False) -> "Catalog":
        """``basedir`` itself if it is a catalog already (shared by a
        :class:`~dacapo_store.store.Store`'s views: one catalog per location), else a new one
        (raises as the constructor)."""
        return basedir if isinstance(basedir, Catalog) else cls(basedir, read_only)

    @property
    def read_only(self) -> bool:
        """Whether the catalog was opened read-only (asked for, an unwritable directory, or a
        network filesystem without the opt-in)."""
        return self.read_only_reason is not None

    def exists(self) -> bool:
        """Whether the store's catalog exists (it is created by the store's first write)."""
        if not self._present:
            self._present = self.path.exists()
        return self._present

    def missing(self) -> str:
        """What is missing of a store that does not exist: "no store at PATH: ..."."""
        what = "does not exist" if not self.basedir.exists() else f"has no {CATALOG_FILENAME}"
        return f"no store at {self.basedir}: the directory {what} (a store is created by its first write)"

    def _create(self) -> None:
        """Create the store directory and its catalog, or bring an existing catalog's schema
        up to date."""
        with self._create_lock:
            if self._schema_ready:
                return
            self.basedir.mkdir(parents=True, exist_ok=True)
            with self._write_transaction("creating the catalog", durable=True) as db:
                for statement in _SCHEMA:
                    db.execute(statement)
                _add_missing_columns(db)
            self._present = self._schema_ready = True

    def _usable_read_only_uri(self) -> str:
        """``mode=ro`` if SQLite can open the database that way here, else ``immutable=1``
        where the database file cannot change (see the module doc).

        Raises:
            NotAuthorizedError: neither can be used safely.
        """
        base = self.path.as_uri()
        try:
            probe = sqlite3.connect(f"{base}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS)
            try:
                probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return f"{base}?mode=ro"
            finally:
                probe.close()
        except sqlite3.OperationalError as error:
            if is_writable(self.basedir) or not _in_wal_mode(self.path):
                return f"{base}?mode=ro"  # not the -shm problem: its use reports the real error
            if not filesystems.cannot_change(self.path):
                raise NotAuthorizedError(
                    f"cannot read the local store at {self.basedir} safely: SQLite cannot open its "
                    f"catalog read-only ({error}: no writer has it open, and this user may not create "
                    f"{CATALOG_FILENAME}-shm there), and the files could still change; open the store "
                    "once as a user who may write it, or read it with write permission on the directory"
                ) from error
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                logger.warning(
                    "%s: its write-ahead log cannot be read from this read-only directory; the "
                    "latest changes may be missing until a writer opens the store", self.basedir,
                )
            return f"{base}?immutable=1"

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (a new one in a forked child process).

        Raises:
            StoreConnectionError: the catalog could not be switched out of WAL mode (on a
                network filesystem; another process has it open).
        """
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            if self.read_only:
                if self._read_only_uri is None:
                    self._read_only_uri = self._usable_read_only_uri()
                db = sqlite3.connect(self._read_only_uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
            else:
                db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
                mode = switch_journal_mode(db, self.journal_mode)
                if mode.lower() != self.journal_mode:
                    db.close()
                    raise StoreConnectionError(
                        f"the catalog of the local store at {self.basedir} is in {mode} mode and could not "
                        f"be switched to {self.journal_mode} (another process has it open): stop every "
                        "process using the store, then retry"
                    )
                db.execute("PRAGMA synchronous=FULL")
            db.row_factory = sqlite3.Row
            self._local.db, self._local.pid, self._local.durable = db, os.getpid(), True
        return db

    def require_writable(self, action: str) -> None:
        """Raise ReadOnlyStoreError if the catalog was opened read-only."""
        if not self.read_only:
            return
        if self.network_filesystem is not None and self.read_only_reason.startswith("on a network"):
            raise ReadOnlyStoreError(
                f"the local store at {self.basedir} is {self.read_only_reason}: not authorized to write "
                f"({action}): SQLite cannot share a catalog between hosts there; use a MongoDB store "
                f"(mongodb:// URI) for runs on several nodes, or set {NETWORK_FS_ENV}={NETWORK_FS_OPT_IN} "
                "to write anyway (rollback journal, no WAL; safe only if the filesystem's locks work "
                "across hosts)"
            )
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
        if not self._schema_ready:  # the store's first write (here or in another process)
            self._create()
        with self._write_transaction(action, durable) as db:
            yield db

    @contextmanager
    def _write_transaction(self, action: str, durable: bool) -> Iterator[sqlite3.Connection]:
        """:meth:`transaction` without its checks."""
        db = self.connection()
        if self.journal_mode == "wal" and self._local.durable != durable:  # a rollback journal: always FULL
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
        """Run one read query and return all its rows (none if the store does not exist yet:
        a read creates nothing)."""
        if not self.exists():
            return []
        try:
            return self.connection().execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as error:
            if str(error).startswith("no such table") and not self._schema_ready:
                return []  # another process is creating the store: it holds nothing yet
            raise


def _in_wal_mode(path: Path) -> bool:
    """Whether the SQLite database file ``path`` is in WAL mode (its header's read and write
    versions are 2); false for anything unreadable."""
    try:
        with open(path, "rb") as file:
            header = file.read(20)
    except OSError:
        return False
    return header.startswith(b"SQLite format 3\x00") and header[18:20] == b"\x02\x02"


def no_score_error(catalog: Catalog, run: str, dataset: str, criterion: str) -> NoScoreError:
    """The error for a best-score query of ``catalog`` that found nothing: it names the
    datasets or criteria that exist when the asked one has no score, or the missing store."""
    if not catalog.exists():
        return NoScoreError(f"run {run!r} has no validation scores: {catalog.missing()}")
    datasets = [row[0] for row in catalog.query("SELECT DISTINCT dataset FROM validation_scores WHERE run = ?", (run,))]
    criteria = [
        row[0] for row in catalog.query(
            "SELECT DISTINCT criterion FROM validation_scores WHERE run = ? AND dataset = ?", (run, dataset)
        )
    ]
    return NoScoreError.for_query(run, dataset, criterion, datasets, criteria)


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


def switch_journal_mode(db: sqlite3.Connection, mode: str, timeout: float = BUSY_TIMEOUT_SECONDS) -> str:
    """Ask for journal ``mode`` on ``db``; return the mode the catalog is in afterwards.

    The switch takes an exclusive lock, and SQLite answers a switch that would deadlock with
    another (processes opening a new catalog at once) with "database is locked" at once instead
    of waiting for its busy timeout: that answer is retried, with a growing pause, for up to
    ``timeout`` seconds.

    Raises:
        sqlite3.OperationalError: still locked after ``timeout``, or any other error.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            return db.execute(f"PRAGMA journal_mode={mode.upper()}").fetchone()[0]
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.1)
