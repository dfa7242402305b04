"""A MongoDB wire-protocol server for tests: pymongo's real networking, retries and error
handling against commands executed on mongomock.

:class:`WireServer` runs `mockupdb <https://pypi.org/project/mockupdb/>`_ (a wire-protocol
server) with one dispatcher that executes every command pymongo sends (``find``, ``insert``,
``update``, ``delete``, ``findAndModify``, ``createIndexes``, ``listIndexes``, ``distinct``,
``aggregate``, ``getMore``, ``killCursors``, ``hello``, ``ping``, ``endSessions``,
``connectionStatus``, ``buildInfo``, ...) on a mongomock database and replies as a MongoDB 7
replica-set primary would. It records every command (:attr:`WireServer.commands`), emulates
a user's role (``read`` refuses writes with code 13, Unauthorized, as a server does), answers
a retried write (same session and ``txnNumber``) with the first attempt's reply as a server
does, and injects :class:`Fault` s: error replies (NotWritablePrimary, ExceededTimeLimit,
Unauthorized), ``writeConcernError`` after executing, and closed connections before or after
executing (a lost reply). :meth:`WireServer.lag_secondary` adds a secondary that stopped
replicating: reads sent with a secondary read preference see the data as it was then. MongoDB's
``failCommand`` fail point (``configureFailPoint``, ``waitForFailPoint``) is emulated with
faults, so tests written for a real server run here too.
Authentication is not emulated: a URI with credentials gets
AuthenticationFailed (code 18), as with a wrong password; without credentials, every client acts
as the server's ``user`` with its ``role``.

Typical use::

    with quick_rediscovery(), WireServer() as server:
        store = MongoWeightsStore(server.uri_with("labdb"))
        server.inject(Fault.error("insert", store.checkpoints.name, NOT_WRITABLE_PRIMARY, times=3))
        store.store_weights(run, 1)
        print(server.sent("findAndModify"))

mockupdb 1.8 needs no adaptation for pymongo 4 beyond what this module does: it answers
``hello`` itself (mockupdb's own reply reports wire version 6, which pymongo 4 refuses).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from bson import Int64, ObjectId

from .mongomock_support import mongomock_client

MAX_WIRE_VERSION = 21  # MongoDB 7.0
SERVER_VERSION = "7.0.12"
REPLY_BATCH_BYTES = 16 * 1024 * 1024
"""A reply batch holds at most this many bytes of documents (the server's 16 MiB limit)."""
DEFAULT_BATCH_SIZE = 101

UNAUTHORIZED = 13
AUTHENTICATION_FAILED = 18
NOT_WRITABLE_PRIMARY = 10107
PRIMARY_STEPPED_DOWN = 189
INTERRUPTED_DUE_TO_REPL_STATE_CHANGE = 11602
EXCEEDED_TIME_LIMIT = 262
WRITE_CONCERN_FAILED = 64
DUPLICATE_KEY = 11000
COMMAND_NOT_FOUND = 59
BAD_VALUE = 2
MAX_TIME_MS_EXPIRED = 50
NAMESPACE_NOT_FOUND = 26

CODE_NAMES = {
    UNAUTHORIZED: "Unauthorized",
    AUTHENTICATION_FAILED: "AuthenticationFailed",
    NOT_WRITABLE_PRIMARY: "NotWritablePrimary",
    PRIMARY_STEPPED_DOWN: "PrimarySteppedDown",
    INTERRUPTED_DUE_TO_REPL_STATE_CHANGE: "InterruptedDueToReplStateChange",
    EXCEEDED_TIME_LIMIT: "ExceededTimeLimit",
    WRITE_CONCERN_FAILED: "WriteConcernFailed",
    DUPLICATE_KEY: "DuplicateKey",
    COMMAND_NOT_FOUND: "CommandNotFound",
    BAD_VALUE: "BadValue",
    MAX_TIME_MS_EXPIRED: "MaxTimeMSExpired",
    NAMESPACE_NOT_FOUND: "NamespaceNotFound",
}
RETRYABLE_CODES = frozenset(
    {NOT_WRITABLE_PRIMARY, PRIMARY_STEPPED_DOWN, INTERRUPTED_DUE_TO_REPL_STATE_CHANGE, EXCEEDED_TIME_LIMIT}
)
"""Codes a MongoDB 4.4+ server labels ``RetryableWriteError`` on a retryable write."""

WRITE_COMMANDS = frozenset({"insert", "update", "delete", "findandmodify", "createindexes", "drop", "dropindexes"})
RETRYABLE_WRITES = frozenset({"insert", "update", "delete", "findandmodify"})
NOISE = frozenset({"hello", "ismaster", "endsessions"})
"""Commands :meth:`WireServer.sent` leaves out (monitoring and session clean-up)."""
ENVELOPE_FIELDS = ("$db", "lsid", "$clusterTime", "txnNumber", "$readPreference", "apiVersion")
"""Fields of a command that say how, not what; :attr:`RecordedCommand.body` leaves them out."""

SECONDARY_READ_MODES = frozenset({"secondary", "secondaryPreferred", "nearest"})
"""Read preference modes a lagging secondary answers (see :meth:`WireServer.lag_secondary`)."""

READ_ACTIONS = ["find", "listIndexes", "listCollections", "collStats", "dbStats"]
WRITE_ACTIONS = ["insert", "update", "remove", "createIndex", "dropCollection"]


@dataclass(frozen=True)
class RecordedCommand:
    """One command the server received: ``name`` as sent, ``database``, ``collection`` (the
    command's target, ``None`` for database commands) and the whole ``document``."""

    name: str
    database: str
    collection: str | None
    document: Mapping[str, Any]

    @property
    def body(self) -> dict[str, Any]:
        """The command without its envelope (session, cluster time, ``$db``, read preference)."""
        return {key: value for key, value in self.document.items() if key not in ENVELOPE_FIELDS}

    @property
    def read_preference(self) -> str:
        """The read preference mode the command carried (``"primary"`` when it carried none)."""
        return _read_preference_mode(self.document)

    @property
    def write_concern(self) -> dict[str, Any] | None:
        """The ``writeConcern`` the command carried (``None``: the server's default)."""
        concern = self.document.get("writeConcern")
        return None if concern is None else dict(concern)


@dataclass
class Fault:
    """A reply the server gives instead of (or after) executing matching commands.

    A command matches when its name equals ``command`` (case-insensitively) and, if
    ``collection`` is set, its target collection is ``collection``. The first ``skip``
    matching commands run normally; the next ``times`` get the fault.

    Kinds (build them with the class methods):

    * ``error``: reply ``{ok: 0, code, errmsg}`` without executing (``execute=True``: after
      executing, as a primary that stepped down after applying the write would);
    * ``write_concern``: execute, then add ``writeConcernError`` to the reply;
    * ``hangup``: close the connection without replying (``execute=True``: after executing:
      the write landed, its reply is lost).
    """

    command: str
    collection: str | None = None
    kind: str = "error"
    code: int = NOT_WRITABLE_PRIMARY
    times: int = 1
    skip: int = 0
    execute: bool = False
    fired: int = field(default=0, init=False)
    """How often the fault fired so far."""
    seen: int = field(default=0, init=False)
    """How many matching commands it saw (skipped ones among them)."""

    @classmethod
    def error(cls, command: str, collection: str | None = None, code: int = NOT_WRITABLE_PRIMARY,
              times: int = 1, skip: int = 0, execute: bool = False) -> "Fault":
        """An error reply with ``code`` (e.g. :data:`NOT_WRITABLE_PRIMARY`, :data:`UNAUTHORIZED`)."""
        return cls(command, collection, "error", code, times, skip, execute)

    @classmethod
    def write_concern(cls, command: str, collection: str | None = None, code: int = WRITE_CONCERN_FAILED,
                      times: int = 1, skip: int = 0) -> "Fault":
        """Execute, then reply with a ``writeConcernError`` of ``code`` (64: wtimeout)."""
        return cls(command, collection, "write_concern", code, times, skip, True)

    @classmethod
    def hangup(cls, command: str, collection: str | None = None, times: int = 1, skip: int = 0,
               execute: bool = False) -> "Fault":
        """Close the connection instead of replying (after executing, if ``execute``)."""
        return cls(command, collection, "hangup", 0, times, skip, execute)

    def matches(self, name: str, collection: str | None) -> bool:
        """Whether a command ``name`` on ``collection`` is one this fault targets."""
        return name.lower() == self.command.lower() and self.collection in (None, collection)

    @property
    def exhausted(self) -> bool:
        """Whether the fault has fired ``times`` times."""
        return self.fired >= self.times


class WireServer:
    """A wire-protocol MongoDB (replica set ``rs0``, one primary) over a mongomock backend.

    Args:
        role: the connected user's role on every database: ``"readWrite"`` (default) or
            ``"read"`` (write commands fail with code 13, Unauthorized).
        user: the user name ``connectionStatus`` reports.
        replica_set: answer ``hello`` as the primary of replica set ``rs0`` (default), else as
            a standalone server (no retryable writes).

    Use as a context manager (or call :meth:`close`, which takes about a second: mockupdb's
    accept loop polls once a second). To share one server between tests, call :meth:`reset`
    between them. Not for production: one lock serializes all connections, as mongomock needs.
    """

    def __init__(self, role: str = "readWrite", user: str = "trainer", replica_set: bool = True) -> None:
        from mockupdb import MockupDB  # imported here: a test dependency only

        self.replica_set = replica_set
        self._lock = threading.Lock()
        self._cursor_ids = itertools.count(1000)
        self.reset(role, user)
        self._mock = MockupDB(request_timeout=int(1e6))
        self._mock.autoresponds(self._handle)
        self._mock.run()
        self.address = f"localhost:{self._mock.port}"

    # ---- use -----------------------------------------------------------------------------------

    def uri_with(self, path: str = "", **options: Any) -> str:
        """``mongodb://host:port/<path>?<options>`` (``replicaSet=rs0`` added for a replica set)."""
        options = {"replicaSet": "rs0", **options} if self.replica_set else options
        query = "&".join(f"{key}={value}" for key, value in options.items())
        return f"mongodb://{self.address}/{path}?{query}"

    def reset(self, role: str = "readWrite", user: str = "trainer") -> None:
        """Start over: an empty backend, no recorded commands, faults, cursors or remembered
        retryable writes; the connected user has ``role`` (``"read"`` or ``"readWrite"``)."""
        if role not in ("read", "readWrite"):
            raise ValueError(f"role must be 'read' or 'readWrite', got {role!r}")
        with self._lock:
            self.role = role
            self.user = user
            self.backend = mongomock_client()
            self.commands: list[RecordedCommand] = []
            self.faults: list[Fault] = []
            self.injected: list[Fault] = []
            self._fail_point: list[Fault] = []
            self._fail_point_entered = 0
            self._secondary: Any = None
            self._cursors: dict[int, tuple[str, str, list[Any]]] = {}
            self._retried_writes: dict[tuple[bytes, int], dict[str, Any]] = {}

    def inject(self, *faults: Fault) -> None:
        """Add ``faults`` (checked in the order added; the first one that matches fires).
        :attr:`injected` keeps every fault injected since :meth:`reset`, for checking that
        each fired."""
        with self._lock:
            self.faults.extend(faults)
            self.injected.extend(faults)

    def unfired(self) -> list[Fault]:
        """The faults injected since :meth:`reset` that never fired (a test whose fault never
        fired tested nothing)."""
        with self._lock:
            return [fault for fault in self.injected if fault.fired == 0]

    def lag_secondary(self) -> None:
        """Add a secondary that stops replicating now: from here on, reads that carry a
        secondary read preference (``secondary``, ``secondaryPreferred``, ``nearest``) are
        answered from a copy of the data as it is now, as a lagging secondary would; writes
        and primary reads see the current data. :meth:`reset` removes the secondary."""
        with self._lock:
            self._secondary = _copy_data(self.backend)

    def secondary_database(self, name: str) -> Any:
        """The lagging secondary's copy of database ``name`` (to inspect or seed directly).

        Raises:
            RuntimeError: no :meth:`lag_secondary` since the last :meth:`reset`.
        """
        if self._secondary is None:
            raise RuntimeError("no lagging secondary: call lag_secondary() first")
        return self._secondary[name]

    def clear(self) -> None:
        """Forget recorded commands and remaining faults (:attr:`injected` keeps them)."""
        with self._lock:
            self.commands.clear()
            self.faults.clear()

    def sent(self, name: str | None = None, collection: str | None = None) -> list[RecordedCommand]:
        """The recorded commands, without monitoring and session clean-up, optionally only
        those named ``name`` (case-insensitively) and/or on ``collection``."""
        with self._lock:
            commands = list(self.commands)
        return [
            command for command in commands
            if command.name.lower() not in NOISE
            and (name is None or command.name.lower() == name.lower())
            and (collection is None or command.collection == collection)
        ]

    def database(self, name: str) -> Any:
        """The mongomock database behind database ``name`` (to inspect or seed directly)."""
        return self.backend[name]

    def close(self) -> None:
        """Stop the server (clients see closed connections)."""
        self._mock.stop()

    def __enter__(self) -> "WireServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ---- dispatch ------------------------------------------------------------------------------

    def _handle(self, request: Any) -> bool:
        document = request.doc
        name = request.command_name
        database = document.get("$db", "admin")
        target = document.get(name)
        collection = target if isinstance(target, str) else None
        if name.lower() == "getmore":
            collection = document.get("collection")
        with self._lock:
            self.commands.append(RecordedCommand(name, database, collection, copy.deepcopy(dict(document))))
            fault = self._fault_for(name, collection)
        if fault is not None and fault.kind == "hangup":
            if fault.execute:
                self._execute(name, database, collection, document)
            return request.hangup()
        if fault is not None and fault.kind == "error" and not fault.execute:
            return request.reply(self._error_reply(fault.code, name, database, document))
        reply = self._execute(name, database, collection, document)
        if fault is not None and fault.kind == "error":
            reply = self._error_reply(fault.code, name, database, document)
        elif fault is not None and fault.kind == "write_concern":
            reply = {**reply, "writeConcernError": {
                "code": fault.code, "codeName": CODE_NAMES.get(fault.code, "Error"),
                "errmsg": "waiting for replication timed out", "errInfo": {"wtimeout": True},
            }}
        return request.reply(reply)

    def _fault_for(self, name: str, collection: str | None) -> Fault | None:
        for fault in self.faults:
            if fault.exhausted or not fault.matches(name, collection):
                continue
            fault.seen += 1
            if fault.seen <= fault.skip:
                continue
            fault.fired += 1
            return fault
        return None

    def _error_reply(self, code: int, name: str, database: str, document: Mapping[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "ok": 0, "code": code, "codeName": CODE_NAMES.get(code, "Error"),
            "errmsg": f"{CODE_NAMES.get(code, 'error')} (injected)",
        }
        if code == UNAUTHORIZED:
            reply["errmsg"] = f"not authorized on {database} to execute command {{ {name}: ... }}"
        if code in RETRYABLE_CODES and name.lower() in RETRYABLE_WRITES and "txnNumber" in document:
            reply["errorLabels"] = ["RetryableWriteError"]
        return reply

    def _execute(self, name: str, database: str, collection: str | None, document: Mapping[str, Any]) -> dict[str, Any]:
        lowered = name.lower()
        if self.role == "read" and lowered in WRITE_COMMANDS:
            return self._error_reply(UNAUTHORIZED, name, database, document)
        retry_key = self._retry_key(lowered, document)
        with self._lock:
            if retry_key is not None and retry_key in self._retried_writes:
                return self._retried_writes[retry_key]
        handler = getattr(self, f"_cmd_{lowered}", None)
        if handler is None:
            return {"ok": 0, "code": COMMAND_NOT_FOUND, "codeName": "CommandNotFound",
                    "errmsg": f"no such command: '{name}'"}
        with self._lock:
            source = self.backend
            if self._secondary is not None and _read_preference_mode(document) in SECONDARY_READ_MODES:
                source = self._secondary
            reply = {"ok": 1, **handler(source[database], collection, document)}
            if retry_key is not None:
                self._retried_writes[retry_key] = reply
        return reply

    @staticmethod
    def _retry_key(name: str, document: Mapping[str, Any]) -> tuple[bytes, int] | None:
        if name not in RETRYABLE_WRITES or "txnNumber" not in document or "lsid" not in document:
            return None
        return bytes(document["lsid"]["id"]), int(document["txnNumber"])

    # ---- server and session commands -------------------------------------------------------

    def _cmd_hello(self, db: Any, collection: Any, document: Mapping[str, Any]) -> dict[str, Any]:
        reply = {
            "helloOk": True, "ismaster": True, "isWritablePrimary": True, "secondary": False,
            "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000, "logicalSessionTimeoutMinutes": 30,
            "minWireVersion": 0, "maxWireVersion": MAX_WIRE_VERSION,
        }
        if self.replica_set:
            reply.update({
                "setName": "rs0", "setVersion": 1, "hosts": [self.address], "primary": self.address,
                "me": self.address, "electionId": ObjectId("7fffffff0000000000000001"),
            })
        return reply

    _cmd_ismaster = _cmd_hello

    def _cmd_ping(self, db: Any, collection: Any, document: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    _cmd_endsessions = _cmd_ping

    def _cmd_configurefailpoint(self, db: Any, collection: Any, document: Mapping[str, Any]) -> dict[str, Any]:
        """MongoDB's ``failCommand`` fail point (a server started with ``enableTestCommands``)
        as faults, so that tests written for a real server run here too. ``mode``:
        ``{"times": n}``, ``"alwaysOn"`` or ``"off"``; ``data``: ``failCommands`` and one of
        ``errorCode``, ``closeConnection`` or ``writeConcernError`` (each listed command fails
        up to n times, not n times in all as on a server). Replies with ``count``, the times
        the fail point was entered before, as a server does."""
        if document.get("configureFailPoint") != "failCommand":
            return {"ok": 0, "code": BAD_VALUE, "codeName": "BadValue",
                    "errmsg": f"unknown fail point {document.get('configureFailPoint')!r}"}
        count = self._fail_point_entered + sum(fault.fired for fault in self._fail_point)
        self._fail_point_entered = count
        self.faults = [fault for fault in self.faults if all(fault is not armed for armed in self._fail_point)]
        self._fail_point = []
        mode = document.get("mode")
        if mode == "off":
            return {"count": count}
        times = int(mode["times"]) if isinstance(mode, Mapping) else 2**62
        data = document.get("data") or {}
        for command in data.get("failCommands", []):
            if data.get("closeConnection"):
                fault = Fault.hangup(command, times=times)
            elif "writeConcernError" in data:
                fault = Fault.write_concern(command, code=int(data["writeConcernError"]["code"]), times=times)
            else:
                fault = Fault.error(command, code=int(data["errorCode"]), times=times)
            self._fail_point.append(fault)
        self.faults.extend(self._fail_point)
        self.injected.extend(self._fail_point)
        return {"count": count}

    def _cmd_waitforfailpoint(self, db: Any, collection: Any, document: Mapping[str, Any]) -> dict[str, Any]:
        """Whether the ``failCommand`` fail point was entered ``timesEntered`` times in all
        (commands here run one by one, so nothing is waited for: MaxTimeMSExpired if not)."""
        entered = self._fail_point_entered + sum(fault.fired for fault in self._fail_point)
        if entered >= int(document.get("timesEntered", 1)):
            return {}
        return {"ok": 0, "code": MAX_TIME_MS_EXPIRED, "codeName": "MaxTimeMSExpired",
                "errmsg": f"the fail point was entered {entered} times, not {document.get('timesEntered')}"}

    def _cmd_saslstart(self, db: Any, collection: Any, document: Mapping[str, Any]) -> dict[str, Any]:
        return {"ok": 0, "code": AUTHENTICATION_FAILED, "codeName": "AuthenticationFailed",
                "errmsg": "Authentication failed."}

    def _cmd_buildinfo(self, db: Any, collection: Any, document: Mapping[str, Any]) -> dict[str, Any]:
        return {"version": SERVER_VERSION, "versionArray": [int(x) for x in SERVER_VERSION.split(".")] + [0]}

    def _cmd_connectionstatus(self, db: Any, collection: Any, document: Mapping[str, Any]) -> dict[str, Any]:
        actions = READ_ACTIONS + (WRITE_ACTIONS if self.role == "readWrite" else [])
        info: dict[str, Any] = {
            "authenticatedUsers": [{"user": self.user, "db": "admin"}],
            "authenticatedUserRoles": [{"role": self.role, "db": db.name}],
        }
        if document.get("showPrivileges"):
            info["authenticatedUserPrivileges"] = [
                {"resource": {"db": db.name, "collection": ""}, "actions": actions}
            ]
        return {"authInfo": info}

    # ---- reads -------------------------------------------------------------------------------

    def _cmd_find(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        limit = abs(int(document.get("limit", 0) or 0))
        cursor = db[collection].find(
            document.get("filter") or {},
            projection=document.get("projection") or None,
            sort=_sort(document.get("sort")),
            skip=int(document.get("skip", 0) or 0),
            limit=limit,
        )
        single = bool(document.get("singleBatch")) or int(document.get("limit", 0) or 0) < 0
        return self._first_batch(db.name, collection, list(cursor), document.get("batchSize"), single)

    def _cmd_aggregate(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        documents = list(db[collection].aggregate(list(document.get("pipeline", []))))
        return self._first_batch(db.name, collection, documents, (document.get("cursor") or {}).get("batchSize"))

    def _cmd_getmore(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        cursor_id = int(document["getMore"])
        database, name, remaining = self._cursors.pop(cursor_id, (db.name, collection, []))
        batch, rest = _take_batch(remaining, document.get("batchSize"))
        next_id = 0
        if rest:
            self._cursors[cursor_id] = (database, name, rest)
            next_id = cursor_id
        return {"cursor": {"id": Int64(next_id), "ns": f"{database}.{name}", "nextBatch": batch}}

    def _cmd_killcursors(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        killed = [cursor for cursor in document.get("cursors", []) if self._cursors.pop(int(cursor), None)]
        return {"cursorsKilled": killed, "cursorsNotFound": [], "cursorsAlive": [], "cursorsUnknown": []}

    def _cmd_distinct(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        return {"values": db[collection].distinct(document["key"], document.get("query") or {})}

    def _cmd_count(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        return {"n": db[collection].count_documents(document.get("query") or {})}

    def _cmd_listindexes(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        if collection not in db.list_collection_names():
            return {"ok": 0, "code": NAMESPACE_NOT_FOUND, "codeName": "NamespaceNotFound",
                    "errmsg": f"ns does not exist: {db.name}.{collection}"}
        indexes = [
            {"v": 2, "key": bson.SON(info["key"]), "name": name,
             **{option: value for option, value in info.items() if option not in ("key", "v")}}
            for name, info in db[collection].index_information().items()
        ]
        return self._first_batch(db.name, collection, indexes, None)

    def _cmd_listcollections(self, db: Any, collection: Any, document: Mapping[str, Any]) -> dict[str, Any]:
        names = [{"name": name, "type": "collection", "options": {}, "info": {"readOnly": False}}
                 for name in db.list_collection_names()]
        return self._first_batch(db.name, "$cmd.listCollections", names, None)

    def _first_batch(self, database: str, collection: str, documents: list[Any], batch_size: Any,
                     single: bool = False) -> dict[str, Any]:
        batch, rest = _take_batch(documents, batch_size)
        cursor_id = 0
        if rest and not single:
            cursor_id = next(self._cursor_ids)
            self._cursors[cursor_id] = (database, collection, rest)
        return {"cursor": {"id": Int64(cursor_id), "ns": f"{database}.{collection}", "firstBatch": batch}}

    # ---- writes ------------------------------------------------------------------------------

    def _cmd_insert(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        from mongomock import DuplicateKeyError

        inserted, errors = 0, []
        for index, item in enumerate(document.get("documents", [])):
            try:
                db[collection].insert_one(dict(item))
                inserted += 1
            except DuplicateKeyError as error:
                errors.append({"index": index, "code": DUPLICATE_KEY, "errmsg": f"E11000 duplicate key error: {error}"})
                if document.get("ordered", True):
                    break
        return {"n": inserted, **({"writeErrors": errors} if errors else {})}

    def _cmd_update(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        from mongomock import DuplicateKeyError

        matched = modified = 0
        upserted, errors = [], []
        target = db[collection]
        for index, statement in enumerate(document.get("updates", [])):
            query, change = statement.get("q") or {}, statement["u"]
            upsert = bool(statement.get("upsert"))
            try:
                if not any(key.startswith("$") for key in change):
                    result = target.replace_one(query, change, upsert=upsert)
                elif statement.get("multi"):
                    result = target.update_many(query, change, upsert=upsert)
                else:
                    result = target.update_one(query, change, upsert=upsert)
            except DuplicateKeyError as error:
                errors.append({"index": index, "code": DUPLICATE_KEY, "errmsg": f"E11000 duplicate key error: {error}"})
                if document.get("ordered", True):
                    break
                continue
            matched += result.matched_count
            modified += result.modified_count
            if result.upserted_id is not None:
                upserted.append({"index": index, "_id": result.upserted_id})
        reply: dict[str, Any] = {"n": matched + len(upserted), "nModified": modified}
        if upserted:
            reply["upserted"] = upserted
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _cmd_delete(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        deleted = 0
        for statement in document.get("deletes", []):
            query = statement.get("q") or {}
            if statement.get("limit", 0) == 1:
                deleted += db[collection].delete_one(query).deleted_count
            else:
                deleted += db[collection].delete_many(query).deleted_count
        return {"n": deleted}

    def _cmd_findandmodify(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        from mongomock import DuplicateKeyError
        from pymongo import ReturnDocument

        target = db[collection]
        query = document.get("query") or {}
        options = {"projection": document.get("fields") or None, "sort": _sort(document.get("sort"))}
        existing = target.find_one(query, sort=options["sort"])
        if document.get("remove"):
            value = target.find_one_and_delete(query, **options)
            return {"value": value, "lastErrorObject": {"n": int(value is not None)}}
        change = document["update"]
        returned = ReturnDocument.AFTER if document.get("new") else ReturnDocument.BEFORE
        upsert = bool(document.get("upsert"))
        try:
            if any(key.startswith("$") for key in change):
                value = target.find_one_and_update(query, change, upsert=upsert, return_document=returned, **options)
            else:
                value = target.find_one_and_replace(query, change, upsert=upsert, return_document=returned, **options)
        except DuplicateKeyError as error:
            return {"ok": 0, "code": DUPLICATE_KEY, "codeName": "DuplicateKey", "errmsg": f"E11000 duplicate key error: {error}"}
        changed = existing is not None or upsert
        return {"value": value, "lastErrorObject": {"n": int(changed), "updatedExisting": existing is not None}}

    def _cmd_createindexes(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        target = db[collection]
        before = len(target.index_information()) if collection in db.list_collection_names() else 0
        for spec in document.get("indexes", []):
            options = {key: value for key, value in spec.items() if key not in ("key", "v")}
            target.create_index(list(spec["key"].items()), **options)
        return {"numIndexesBefore": before, "numIndexesAfter": len(target.index_information()),
                "createdCollectionAutomatically": before == 0}

    def _cmd_drop(self, db: Any, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        db.drop_collection(collection)
        return {}

    def _cmd_dropdatabase(self, db: Any, collection: Any, document: Mapping[str, Any]) -> dict[str, Any]:
        self.backend.drop_database(db.name)
        return {}


def _read_preference_mode(document: Mapping[str, Any]) -> str:
    return dict(document.get("$readPreference") or {}).get("mode", "primary")


def _copy_data(backend: Any) -> Any:
    """A new mongomock client holding a copy of every document of ``backend``."""
    copied = mongomock_client()
    for database in backend.list_database_names():
        for collection in backend[database].list_collection_names():
            documents = [copy.deepcopy(document) for document in backend[database][collection].find()]
            if documents:
                copied[database][collection].insert_many(documents)
    return copied


def _sort(sort: Any) -> list[tuple[str, int]] | None:
    return list(sort.items()) if sort else None


def _take_batch(documents: list[Any], batch_size: Any) -> tuple[list[Any], list[Any]]:
    """Split ``documents`` into a reply batch (at most ``batch_size`` documents, default 101,
    and at most :data:`REPLY_BATCH_BYTES` of BSON, but at least one document) and the rest."""
    limit = int(batch_size) if batch_size else DEFAULT_BATCH_SIZE
    batch, size = [], 0
    for document in documents[:limit]:
        size += len(bson.encode(document))
        if batch and size > REPLY_BATCH_BYTES:
            break
        batch.append(document)
    return batch, documents[len(batch):]


class FakeClock:
    """Time for a :class:`~dacapo_store.mongo.retry.RetryPolicy` that passes only when the policy
    sleeps: retries run at once, the budget still counts every wait. ``sleeps`` lists them."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` without waiting."""
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now

    def policy(self, budget: float = 60.0, **options: Any) -> Any:
        """A retry policy on this clock, without jitter (``options``: as RetryPolicy's)."""
        from ..mongo.retry import RetryPolicy

        return RetryPolicy(budget=budget, sleep=self.sleep, clock=self, jitter=lambda: 1.0, **options)


@contextlib.contextmanager
def quick_rediscovery(interval: float = 0.01) -> Iterator[None]:
    """Let pymongo re-check a server every ``interval`` seconds after an error (its floor is
    0.5 s), so that failover tests do not wait on pymongo's monitor. Restored on exit."""
    from pymongo import common

    saved = common.MIN_HEARTBEAT_INTERVAL
    common.MIN_HEARTBEAT_INTERVAL = interval
    try:
        yield
    finally:
        common.MIN_HEARTBEAT_INTERVAL = saved
