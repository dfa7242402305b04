"""Run configs in the ``<prefix>runs`` collection of a MongoDB store."""

from __future__ import annotations

import time
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError
from pymongo.write_concern import WriteConcern

from ..run_configs import RunConfigStore
from .connection import DEFAULT_COLLECTION_PREFIX, MongoDatabase
from .retry import RetryPolicy

RUNS_COLLECTION = "runs"
RUN_CONFIG_INDEXES = (([("name", ASCENDING)], {"name": "name", "unique": True}),)


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
        self.database = MongoDatabase.of(db_host, db_name, write_concern, read_only, retry, collection_prefix)
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
