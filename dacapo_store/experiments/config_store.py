"""The run config store: run configs by name, so that any machine can rebuild a run.

Configs are kept as canonical JSON text (sorted keys) beside their name, which is a value,
never a field name. A name holds one config forever: storing the same config again is a no-op,
storing a different one under a taken name raises :class:`RunConfigConflictError`.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError
from pymongo.write_concern import WriteConcern

from ..checks import check_json_value, check_name
from ..config import open_store
from ..errors import DacapoStoreError
from ..local.catalog import Catalog
from ..mongo.connection import DEFAULT_COLLECTION_PREFIX, MongoDatabase
from ..mongo.retry import RetryPolicy

RUNS_COLLECTION = "runs"
RUN_CONFIG_INDEXES = (([("name", ASCENDING)], {"name": "name", "unique": True}),)
RUNS_TABLE_SQL = """CREATE TABLE IF NOT EXISTS run_configs (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created REAL NOT NULL
)"""


class RunConfigConflictError(DacapoStoreError, ValueError):
    """A different run config is already stored under this name."""


class RunConfigNotFoundError(DacapoStoreError, LookupError):
    """No run config is stored under this name."""


def canonical_json(config: Mapping[str, Any]) -> str:
    """The stored text of a config dict (sorted keys, no NaN).

    Raises:
        TypeError / ValueError: the dict is not JSON-able.
    """
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_differences(stored: Any, new: Any, path: str = "") -> list[str]:
    """Describe where two config dicts differ: ``"path: stored X, new Y"`` per differing leaf."""
    if isinstance(stored, dict) and isinstance(new, dict):
        return [
            difference
            for key in sorted(set(stored) | set(new))
            for difference in config_differences(
                stored.get(key, "<absent>"), new.get(key, "<absent>"), f"{path}.{key}" if path else key
            )
        ]
    return [] if stored == new else [f"{path}: stored {stored!r}, new {new!r}"]


class RunConfigStore(ABC):
    """Run config dicts (as ``RunConfig.to_dict()`` gives them), unique by ``name``."""

    def store_run_config(self, config: Mapping[str, Any]) -> None:
        """Store ``config`` under ``config["name"]``; the same config again is a no-op.

        Raises:
            RunConfigConflictError: a different config is stored under that name (a ValueError).
            TypeError / ValueError: no valid ``name``, or the config is not JSON-able (as
                :func:`~dacapo_store.checks.check_json_value`: the message names the field).
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"a run config must be a mapping, got {type(config).__name__}")
        name = check_name(config.get("name"), "run")
        check_json_value(config, "run config")
        text = canonical_json(config)
        existing = self._insert(name, text)
        if existing is not None and existing != text:
            differences = "; ".join(config_differences(json.loads(existing), json.loads(text)))
            raise RunConfigConflictError(
                f"run {name!r} already has a different config stored ({differences}); "
                "choose another run name"
            )

    def retrieve_run_config(self, name: str) -> dict[str, Any]:
        """Return the config dict stored under ``name``.

        Raises:
            RunConfigNotFoundError: none is stored (a LookupError).
        """
        text = self._find(check_name(name, "run"))
        if text is None:
            raise RunConfigNotFoundError(f"no run config named {name!r} is stored")
        return json.loads(text)

    @abstractmethod
    def list_run_configs(self) -> list[str]:
        """The names of the stored run configs, sorted."""

    @abstractmethod
    def _insert(self, name: str, text: str) -> str | None:
        """Insert ``text`` under ``name`` unless the name is taken; return the text already
        stored under it (``None`` if it was inserted)."""

    @abstractmethod
    def _find(self, name: str) -> str | None:
        """The text stored under ``name``, or ``None``."""


class LocalRunConfigStore(RunConfigStore):
    """Run configs in the ``run_configs`` table of a local store's SQLite catalog.

    Args and raises: as :class:`~dacapo_store.LocalWeightsStore` (``basedir``, ``read_only``).
    """

    def __init__(self, basedir: str | os.PathLike, read_only: bool = False) -> None:
        self.catalog = Catalog(basedir, read_only)
        if not self.catalog.read_only and self.catalog.exists():
            with self.catalog.transaction() as db:
                db.execute(RUNS_TABLE_SQL)

    def __repr__(self) -> str:
        return f"LocalRunConfigStore({str(self.catalog.basedir)!r})"

    def list_run_configs(self) -> list[str]:
        if not self._has_table():  # a read-only (or not yet created) store that never held a run config
            return []
        return [row["name"] for row in self.catalog.query("SELECT name FROM run_configs ORDER BY name")]

    def _has_table(self) -> bool:
        return bool(self.catalog.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'run_configs'"))

    def _insert(self, name: str, text: str) -> str | None:
        with self.catalog.transaction() as db:
            db.execute(RUNS_TABLE_SQL)
            row = db.execute("SELECT config FROM run_configs WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return row["config"]
            db.execute(
                "INSERT INTO run_configs (name, config, created) VALUES (?, ?, ?)", (name, text, time.time())
            )
        return None

    def _find(self, name: str) -> str | None:
        if not self._has_table():
            return None
        rows = self.catalog.query("SELECT config FROM run_configs WHERE name = ?", (name,))
        return rows[0]["config"] if rows else None


class MongoRunConfigStore(RunConfigStore):
    """Run configs in the ``<prefix>runs`` collection (unique index on ``name``).

    Args:
        db_host: a MongoDB URI or an existing client (pymongo or mongomock).
        db_name: the database (default: the URI's, else ``"dacapo"``).
        write_concern, read_only, retry: as :class:`~dacapo_store.mongo.connection.MongoDatabase`.
        collection_prefix: put before every collection name (default ``"dacapo_store."``).

    Raises:
        StoreConnectionError: the server is unreachable.
    """

    def __init__(
        self,
        db_host: Any,
        db_name: str | None = None,
        write_concern: WriteConcern | None = None,
        read_only: bool = False,
        retry: RetryPolicy | None = None,
        collection_prefix: str = DEFAULT_COLLECTION_PREFIX,
    ) -> None:
        self.database = MongoDatabase(db_host, db_name, write_concern, read_only, retry, collection_prefix)
        self.runs = self.database.collection(RUNS_COLLECTION)
        self.database.ensure_indexes(self.runs, RUN_CONFIG_INDEXES)

    def __repr__(self) -> str:
        return f"MongoRunConfigStore({self.database.display!r}, db_name={self.database.db_name!r})"

    def list_run_configs(self) -> list[str]:
        return sorted(self.database.read("listing run configs", lambda: self.runs.distinct("name")))

    def _insert(self, name: str, text: str) -> str | None:
        """Insert, retried: a retry of an insert that landed finds its own text (no conflict)."""

        def insert() -> str | None:
            try:
                self.runs.insert_one({"name": name, "config": text, "created": time.time()})
                return None
            except DuplicateKeyError:
                document = self.database.primary(self.runs).find_one({"name": name}, projection={"config": True})
                return None if document is None else document["config"]

        return self.database.write(f"storing the config of run {name!r}", insert)

    def _find(self, name: str) -> str | None:
        document = self.database.read(
            f"reading the config of run {name!r}",
            lambda: self.runs.find_one({"name": name}, projection={"config": True, "_id": False}),
        )
        return None if document is None else document["config"]


def create_run_config_store(store: str | os.PathLike | None = None, **options: Any) -> RunConfigStore:
    """Open the run config store beside the weights and stats stores that ``store`` (or the
    environment) designates (see :func:`dacapo_store.resolve_store`); ``options`` go to the
    store's constructor (e.g. ``read_only=True``).

    Raises:
        ConfigurationError, StoreConnectionError, StoreNotFoundError (read-only, no store there).
    """
    return open_store(store, LocalRunConfigStore, MongoRunConfigStore, **options)
