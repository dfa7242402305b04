"""Connecting to MongoDB: clients from URIs, write concerns, idempotent index creation, and
errors that never show a password."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pymongo
from pymongo.uri_parser import parse_uri
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError
from pymongo.write_concern import WriteConcern

from ..errors import StoreConnectionError
from ..uri import redact_text, redact_uri

SERVER_SELECTION_TIMEOUT_MS = 5000
DEFAULT_WRITE_CONCERN = WriteConcern(w="majority", j=True)
DEFAULT_COLLECTION_PREFIX = "dacapo_store."
"""Prefix of every collection the stores use, so that they share a database with DaCapo's own
collections (``runs``, ``training_stats``, ``validation_scores``, ...) without touching them."""

IndexSpec = tuple[Sequence[tuple[str, int]], dict[str, Any]]
"""Keys and options (a ``name`` among them) of one index."""


def check_collection_prefix(prefix: Any) -> str:
    """Return ``prefix`` if collection names may start with it.

    Raises:
        TypeError: not a str.
        ValueError: contains ``$`` or NUL, starts with ``system.`` or ``.``, or is longer than
            64 characters.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"collection_prefix must be a str, got {type(prefix).__name__}")
    if "$" in prefix or "\x00" in prefix or prefix.startswith(("system.", ".")) or len(prefix) > 64:
        raise ValueError(
            f"collection_prefix {prefix!r} is not a valid start of a MongoDB collection name (no '$' "
            "or NUL, not starting with 'system.' or '.', at most 64 characters)"
        )
    return prefix


class MongoDatabase:
    """One database of a MongoDB deployment, as the stores use it.

    Args:
        db_host: a ``mongodb://`` / ``mongodb+srv://`` URI, or an existing client (a pymongo
            ``MongoClient`` or a ``mongomock.MongoClient``).
        db_name: the database name.
        write_concern: for every write (default ``w="majority", j=True``).
        collection_prefix: put before every collection name (default ``"dacapo_store."``;
            ``""`` is the layout of dacapo-store 0.2).

    Raises:
        TypeError: ``db_host`` is neither a URI nor a client, or ``collection_prefix`` is not a str.
        ValueError: ``collection_prefix`` is not a valid start of a collection name.
        StoreConnectionError: the server cannot be reached (password redacted).
    """

    def __init__(
        self,
        db_host: Any,
        db_name: str,
        write_concern: WriteConcern = DEFAULT_WRITE_CONCERN,
        collection_prefix: str = DEFAULT_COLLECTION_PREFIX,
    ) -> None:
        self.collection_prefix = check_collection_prefix(collection_prefix)
        if isinstance(db_host, str):
            self.uri = db_host
            self.display = redact_uri(db_host)
            # Options written in the URI win over these defaults.
            defaults = {
                "serverSelectionTimeoutMS": SERVER_SELECTION_TIMEOUT_MS,
                "retryWrites": True,
                "retryReads": True,
            }
            try:
                in_uri = {name.lower() for name in parse_uri(db_host, connect_timeout=None)["options"]}
                options = {k: v for k, v in defaults.items() if k.lower() not in in_uri}
                self.client = pymongo.MongoClient(db_host, **options)
            except (PyMongoError, ValueError) as error:
                raise StoreConnectionError(
                    f"bad MongoDB URI {self.display}: {redact_text(str(error), db_host)}"
                ) from None
        elif hasattr(db_host, "get_database"):
            self.uri = ""
            self.display = f"<{type(db_host).__name__}>"
            self.client = db_host
        else:
            raise TypeError(
                f"db_host must be a MongoDB URI or a MongoClient, got {type(db_host).__name__}"
            )
        self.db_name = db_name
        self.write_concern = write_concern
        self.db = self.client.get_database(db_name, write_concern=write_concern)

    def collection(self, name: str) -> Any:
        """The store's collection ``name`` (the prefix put before it) with its write concern."""
        return self.db.get_collection(self.collection_prefix + name, write_concern=self.write_concern)

    @contextmanager
    def reporting_errors(self, action: str) -> Iterator[None]:
        """Turn connection and authorization failures into :class:`StoreConnectionError`."""
        try:
            yield
        except (ConnectionFailure, OperationFailure) as error:
            raise StoreConnectionError(
                f"MongoDB at {self.display} (database {self.db_name!r}) failed while {action}: "
                f"{redact_text(str(error), self.uri)}"
            ) from None

    def ensure_indexes(self, collection: Any, specs: Sequence[IndexSpec]) -> None:
        """Create the indexes ``specs`` on ``collection`` if missing.

        Idempotent and safe when several processes start at once: creating an index that
        exists with the same keys and options is a no-op on the server.

        Raises:
            StoreConnectionError: the server is unreachable or refuses (password redacted).
        """
        with self.reporting_errors(f"creating indexes on {collection.name}"):
            for keys, options in specs:
                collection.create_index(list(keys), **options)
