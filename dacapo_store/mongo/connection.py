"""Connecting to MongoDB: clients from URIs (the URI decides database, write concern, read
preference and timeouts), indexes created or checked, every operation run through the retry
policy, and errors that say what went wrong and never show a password."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Callable, TypeVar

import pymongo
from pymongo import ReadPreference
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
)
from pymongo.uri_parser import parse_uri
from pymongo.write_concern import WriteConcern

from ..errors import (
    ConfigurationError,
    NotAuthorizedError,
    ReadOnlyStoreError,
    StoreConnectionError,
    WriteConcernFailedError,
)
from ..uri import check_credentials, redact_text, redact_uri
from .retry import RetryPolicy, is_transient

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DB_NAME = "dacapo"
SERVER_SELECTION_TIMEOUT_MS = 5000
"""How long one attempt waits for a suitable server (pymongo's default is 30 s). Short, so that
a wrong host or a stopped server is reported within seconds when a store is opened; a failover
during work is outlasted by the retry policy (:mod:`.retry`, 60 s by default), whose attempts
each wait this long for the new primary. A ``serverSelectionTimeoutMS`` in the URI wins."""
DEFAULT_WRITE_CONCERN = WriteConcern(w="majority", j=True)
"""The write concern when neither the URI nor the caller sets one; each of ``w`` and
``journal`` the URI does set replaces the default's, and ``wtimeoutMS`` is added."""

DEFAULT_COLLECTION_PREFIX = "dacapo_store."
"""Prefix of every collection the stores use, so that they share a database with DaCapo's own
collections (``runs``, ``training_stats``, ``validation_scores``, ...) without touching them."""

UNAUTHORIZED_CODES = frozenset({13})  # Unauthorized
AUTHENTICATION_FAILED = 18
UNAUTHORIZED_ATLAS_CODE = 8000  # AtlasError, among them "user is not allowed to do action ..."

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


def store_write_concern(configured: Mapping[str, Any]) -> WriteConcern:
    """The write concern of a store whose URI (or client) sets ``configured`` (a write concern
    document: ``w``, ``j``, ``wtimeout``): each of ``w`` and ``j`` it sets wins over the default
    ``w="majority", j=True``; ``wtimeout`` is kept.

    Raises:
        ConfigurationError: ``w=0`` (unacknowledged writes: the store needs to know each write's
            outcome), or a combination pymongo refuses.
    """
    if configured.get("w") == 0:
        raise ConfigurationError(
            "w=0 (unacknowledged writes) is not supported: the store must know whether each "
            "write landed; use w=1 or w=majority"
        )
    try:
        return WriteConcern(
            w=configured.get("w", DEFAULT_WRITE_CONCERN.document["w"]),
            j=configured.get("j", DEFAULT_WRITE_CONCERN.document["j"]),
            wtimeout=configured.get("wtimeout"),
        )
    except (PyMongoError, TypeError, ValueError) as error:
        raise ConfigurationError(f"invalid write concern {dict(configured)}: {error}") from None


def is_unauthorized(error: BaseException) -> bool:
    """Whether ``error`` is the server refusing an operation to this user (code 13,
    Unauthorized; Atlas's "not allowed to do action")."""
    if not isinstance(error, OperationFailure):
        return False
    if error.code in UNAUTHORIZED_CODES:
        return True
    message = str(error).lower()
    return error.code == UNAUTHORIZED_ATLAS_CODE and ("not allowed" in message or "not authorized" in message)


def write_concern_failure(error: BaseException) -> str | None:
    """The server's message if ``error`` reports a write that landed but missed its write
    concern (a ``writeConcernError``; for bulk writes, in ``writeConcernErrors``); else ``None``."""
    if isinstance(error, WriteConcernError):
        return str(error)
    if isinstance(error, BulkWriteError):
        problems = (error.details or {}).get("writeConcernErrors") or []
        if problems:
            return "; ".join(str(problem.get("errmsg", problem)) for problem in problems)
    return None


UNREACHABLE_CAUSES = (
    ("connection refused", "connection refused: nothing listens there; check the host, the port and that MongoDB runs"),
    ("name or service not known", "the host name is not known; check its spelling"),
    ("nodename nor servname", "the host name is not known; check its spelling"),
    ("getaddrinfo failed", "the host name is not known; check its spelling"),
    ("no address associated", "the host name is not known; check its spelling"),
    ("timed out", "no answer: the server is down, or a firewall or network is in the way"),
    ("connection closed", "the connection was closed: the server restarted, or the network cut it"),
    ("connection reset", "the connection was closed: the server restarted, or the network cut it"),
    ("no replica set members", "no member of the replica set fits: check replicaSet=... in the URI"),
    ("ssl", "the TLS handshake failed; check the tls options of the URI"),
)
"""What a connection error's text shows (lower case) and what to tell the user, in order."""


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` means no server could be reached (not a server that answered with
    an error, as a primary stepping down does)."""
    if isinstance(error, (ServerSelectionTimeoutError, NetworkTimeout)):
        return True
    return isinstance(error, AutoReconnect) and not isinstance(error, NotPrimaryError)


def unreachable_cause(message: str) -> str:
    """What a connection error's ``message`` says went wrong, in a few words, and how long
    the client waited (from pymongo's ``Timeout: 0.2s``) if it says."""
    lowered = message.lower()
    cause = next((said for shown, said in UNREACHABLE_CAUSES if shown in lowered), "no suitable server answered")
    waited = re.search(r"Timeout: ([0-9.]+)s", message)
    return f"{cause} (waited {float(waited.group(1)):g} s)" if waited else cause


def database_named_in(uri: str) -> str | None:
    """The database a MongoDB URI names (``mongodb://host/labdb``), ``None`` if none.

    Raises:
        pymongo's errors (several types) or ValueError: a malformed URI.
    """
    return parse_uri(uri, connect_timeout=None)["database"]


class MongoDatabase:
    """One database of a MongoDB deployment, as the stores use it.

    Args:
        db_host: a ``mongodb://`` / ``mongodb+srv://`` URI, or an existing client (a pymongo
            ``MongoClient`` or a ``mongomock.MongoClient``).
        db_name: the database; ``None``: the URI's (``mongodb://host/labdb``) or the client's
            default database, else ``"dacapo"``.
        write_concern: for every write; ``None``: what the URI (or client) sets, each unset
            field from ``w="majority", j=True`` (see :func:`store_write_concern`).
        read_only: open for reading: indexes are checked, not created, and every write raises
            :class:`~dacapo_store.errors.ReadOnlyStoreError` before anything is sent.
        retry: the retry policy of every operation after opening (default: 60 s budget, or
            ``$DACAPO_STORE_RETRY_SECONDS``).
        collection_prefix: put before every collection name (default ``"dacapo_store."``;
            ``""`` is the layout of dacapo-store 0.2).

    The URI's options (``readPreference``, ``w``, ``journal``, ``wtimeoutMS``, timeouts,
    ``replicaSet``, ...) are pymongo's; ``serverSelectionTimeoutMS`` defaults to 5 s and
    ``retryWrites``/``retryReads`` to on when the URI does not set them.

    Raises:
        TypeError: ``db_host`` is neither a URI nor a client, or ``collection_prefix`` is not a str.
        ValueError: ``collection_prefix`` is not a valid start of a collection name.
        ConfigurationError: a malformed URI, an unescaped password, or ``w=0`` (password redacted).
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
        self.collection_prefix = check_collection_prefix(collection_prefix)
        if isinstance(db_host, str):
            self.uri = db_host
            self.display = redact_uri(db_host)
            self.client, uri_database = self._connect(db_host)
            default_database = uri_database or DEFAULT_DB_NAME
        elif hasattr(db_host, "get_database"):
            self.uri = ""
            self.display = f"<{type(db_host).__name__}>"
            self.client = db_host
            default_database = db_host.get_default_database(DEFAULT_DB_NAME).name
        else:
            raise TypeError(
                f"db_host must be a MongoDB URI or a MongoClient, got {type(db_host).__name__}"
            )
        if write_concern is None:
            configured = getattr(self.client, "write_concern", None)
            write_concern = store_write_concern(configured.document if isinstance(configured, WriteConcern) else {})
        self.db_name = db_name or default_database
        self.write_concern = write_concern
        self.read_only = read_only
        self.retry = retry if retry is not None else RetryPolicy()
        self.db = self.client.get_database(self.db_name, write_concern=write_concern)

    @classmethod
    def of(
        cls,
        db_host: Any,
        db_name: str | None = None,
        write_concern: WriteConcern | None = None,
        read_only: bool = False,
        retry: RetryPolicy | None = None,
        collection_prefix: str = DEFAULT_COLLECTION_PREFIX,
    ) -> "MongoDatabase":
        """``db_host`` itself if it is a :class:`MongoDatabase` already (shared by a
        :class:`~dacapo_store.store.Store`'s views: one client per location; the other
        arguments are then the database's), else a new one (args and raises as the
        constructor)."""
        if isinstance(db_host, MongoDatabase):
            return db_host
        return cls(db_host, db_name, write_concern, read_only, retry, collection_prefix)

    def close(self) -> None:
        """Close the client if this database opened it (from a URI); a client passed in
        belongs to its caller."""
        if self.uri:
            self.client.close()

    def _connect(self, uri: str) -> tuple[Any, str | None]:
        """A client for ``uri`` and the URI's database (``None`` if it names none)."""
        check_credentials(uri)
        defaults = {
            "serverSelectionTimeoutMS": SERVER_SELECTION_TIMEOUT_MS,
            "retryWrites": True,
            "retryReads": True,
        }
        try:
            parsed = parse_uri(uri, connect_timeout=None)
            in_uri = {name.lower() for name in parsed["options"]}
            options = {k: v for k, v in defaults.items() if k.lower() not in in_uri}
            return pymongo.MongoClient(uri, **options), parsed["database"]
        except (PyMongoError, ValueError) as error:
            raise ConfigurationError(
                f"bad MongoDB URI {self.display}: {redact_text(str(error), uri)}"
            ) from None

    def __str__(self) -> str:
        return f"MongoDB at {self.display} (database {self.db_name!r})"

    def collection(self, name: str) -> Any:
        """The store's collection ``name`` (the prefix put before it) with the store's write
        concern and the URI's read preference."""
        return self.db.get_collection(self.collection_prefix + name, write_concern=self.write_concern)

    def primary(self, collection: Any) -> Any:
        """``collection`` read from the primary: for the reads of the write protocol, which
        must see the writes just made whatever the URI's read preference."""
        return collection.with_options(read_preference=ReadPreference.PRIMARY)

    # ---- running operations --------------------------------------------------------------------

    def read(self, action: str, step: Callable[[], T]) -> T:
        """Run the read ``step`` with retries (see :meth:`run`)."""
        return self.run(action, step, write=False)

    def write(self, action: str, step: Callable[[], T]) -> T:
        """Run the write ``step`` with retries (see :meth:`run`); it must be idempotent."""
        return self.run(action, step, write=True)

    def run(self, action: str, step: Callable[[], T], write: bool) -> T:
        """Run ``step``, retrying transient errors under the store's policy, and translate the
        server's refusals.

        Args:
            action: what the step does, for messages (``"storing checkpoint 3 of run 'a'"``).
            step: an idempotent function doing the work.
            write: whether the step writes (refused at once on a read-only store).

        Raises:
            ReadOnlyStoreError: a write on a store opened read-only (nothing is sent).
            NotAuthorizedError: the user lacks the privilege, or authentication failed (a
                PermissionError).
            WriteConcernFailedError: a write landed but missed its write concern.
            StoreConnectionError: still unreachable (or no primary) when the retry budget ran out.
        """
        if write:
            self.require_writable(action)
        try:
            return self.retry.call(step, action)
        except PyMongoError as error:
            self._raise_translated(error, action, write, self.retry.budget)

    @contextmanager
    def reporting_errors(self, action: str) -> Iterator[None]:
        """Translate errors of the enclosed reads as :meth:`run` does (without retrying)."""
        try:
            yield
        except PyMongoError as error:
            self._raise_translated(error, action, False, 0.0)

    def require_writable(self, action: str) -> None:
        """Raise ReadOnlyStoreError (nothing sent) if the store was opened read-only."""
        if self.read_only:
            raise ReadOnlyStoreError(f"{self} is opened read-only: not authorized to write ({action})")

    def _raise_translated(self, error: PyMongoError, action: str, write: bool, budget: float) -> None:
        translated = self.translate(error, action, write, budget)
        if translated is error:
            raise error
        raise translated from error

    def translate(self, error: PyMongoError, action: str, write: bool, budget: float) -> BaseException:
        """The store error for a pymongo ``error`` raised while doing ``action`` after retrying
        for up to ``budget`` seconds (the error itself if it needs no translation); its message
        never shows the password. A server that could not be reached is said first, with the
        URI and the likely cause ("cannot reach MongoDB at ...: connection refused ..."), and
        pymongo's own words after."""
        message = redact_text(str(error).split(", Topology Description:")[0], self.uri)
        if isinstance(error, OperationFailure) and error.code == AUTHENTICATION_FAILED:
            return NotAuthorizedError(
                f"{self}: authentication failed ({action}); check the user name, password and "
                f"authSource: {message}"
            )
        if is_unauthorized(error):
            verb = "write" if write else "read"
            return NotAuthorizedError(f"{self}: not authorized to {verb} ({action}): {message}")
        concern = write_concern_failure(error)
        if concern is not None and not is_transient(error):
            return WriteConcernFailedError(
                f"{self}: {action}: the write was applied but not confirmed under write concern "
                f"{self.write_concern.document}: {redact_text(concern, self.uri)}"
            )
        retried = f" (retried for up to {budget:g} s)" if budget else ""
        if is_unreachable(error):
            return StoreConnectionError(
                f"cannot reach {self}: {unreachable_cause(message)}{retried}. While {action}: {message}"
            )
        if is_transient(error):
            return StoreConnectionError(f"{self} failed while {action}{retried}: {message}")
        return error

    # ---- indexes -----------------------------------------------------------------------------

    def ensure_indexes(self, collection: Any, specs: Sequence[IndexSpec]) -> None:
        """Create the indexes ``specs`` on ``collection`` if missing; on a read-only store, or
        for a user not allowed to create indexes, check them instead (:meth:`check_indexes`).

        Idempotent and safe when several processes start at once: creating an index that
        exists with the same keys and options is a no-op on the server. Not retried, so that a
        wrong host is reported within the server selection timeout.

        Raises:
            StoreConnectionError: the server is unreachable (password redacted).
            NotAuthorizedError: the user may not even list the indexes.
        """
        if self.read_only:
            self.check_indexes(collection, specs)
            return
        try:
            with self.reporting_errors(f"creating indexes on {collection.name}"):
                for keys, options in specs:
                    collection.create_index(list(keys), **options)
        except NotAuthorizedError:
            logger.warning(
                "%s: not authorized to create indexes on %s; checking them instead (writes by "
                "this user will be refused too)", self, collection.name,
            )
            self.check_indexes(collection, specs)

    def missing_indexes(self, collection: Any, specs: Sequence[IndexSpec]) -> list[str] | None:
        """The names of the indexes ``specs`` that ``collection`` lacks (one ``listIndexes``,
        not retried); ``None`` if the collection does not exist (an empty store needs none yet).

        Raises:
            StoreConnectionError, NotAuthorizedError: as :meth:`ensure_indexes`.
        """
        with self.reporting_errors(f"listing the indexes of {collection.name}"):
            existing = [_index_signature(index["key"].items(), index) for index in collection.list_indexes()]
        if not existing:  # no collection (pymongo lists none; a collection has its _id index)
            return None
        return [options["name"] for keys, options in specs if _index_signature(keys, options) not in existing]

    def check_indexes(self, collection: Any, specs: Sequence[IndexSpec]) -> list[str]:
        """Return the names of the indexes ``specs`` that ``collection`` lacks (see
        :meth:`missing_indexes`; none for a missing collection), logging a warning for each.

        Raises:
            StoreConnectionError, NotAuthorizedError: as :meth:`ensure_indexes`.
        """
        missing = self.missing_indexes(collection, specs) or []
        for name in missing:
            logger.warning(
                "%s: index %r on %s is missing: queries on it scan the collection; open the store "
                "once for writing with a user allowed to create indexes (readWrite) to create it",
                self, name, collection.name,
            )
        return missing


def _index_signature(keys: Any, options: Mapping[str, Any]) -> tuple[tuple[tuple[str, Any], ...], bool]:
    """An index's key pattern (directions as ints) and uniqueness, for comparing a wanted index
    with one the server lists."""
    pattern = tuple(
        (str(field), int(direction) if isinstance(direction, (int, float)) else direction)
        for field, direction in keys
    )
    return pattern, bool(options.get("unique"))
