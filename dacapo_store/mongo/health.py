"""The health check of a MongoDB store: the URI and its read preference, connectivity, server
version and topology (a replica set, or a standalone server without failover), the user's
privileges on the database (``connectionStatus``), the indexes the stores and GridFS need, and
the write concern in effect. Read-only: nothing is created or written."""

from __future__ import annotations

import time
from typing import Any, Callable

from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri

from ..errors import DacapoStoreError
from ..health import OK, OLDEST_SERVER, PROBLEM, WARNING, Finding
from ..uri import redact_text
from .connection import IndexSpec, MongoDatabase
from .retry import NO_RETRY
from .run_configs import RUN_CONFIG_INDEXES, RUNS_COLLECTION
from .scores import SCORE_INDEXES, SCORES_COLLECTION
from .stats import TRAINING_STATS_COLLECTION, TRAINING_STATS_INDEXES
from .payloads import GRIDFS_INDEXES
from .weights import CHECKPOINT_INDEXES, CHECKPOINTS_COLLECTION

WRITE_ACTIONS = {"insert", "update", "remove"}


def _store_indexes() -> list[tuple[str, tuple[IndexSpec, ...]]]:
    return [
        (CHECKPOINTS_COLLECTION, CHECKPOINT_INDEXES),
        (SCORES_COLLECTION, SCORE_INDEXES),
        (TRAINING_STATS_COLLECTION, TRAINING_STATS_INDEXES),
        (RUNS_COLLECTION, RUN_CONFIG_INDEXES),
        *GRIDFS_INDEXES,
    ]


def diagnose_mongo(uri: str, db_name: str | None = None) -> list[Finding]:
    """Check a MongoDB store (read-only: nothing is created or written)."""
    try:
        database = MongoDatabase(uri, db_name, read_only=True, retry=NO_RETRY)
    except DacapoStoreError as error:
        return [Finding(PROBLEM, "uri", str(error))]
    findings = [Finding(OK, "uri", f"{database.display}, database {database.db_name!r}")]
    options = {key.lower(): value for key, value in parse_uri(uri, connect_timeout=None)["options"].items()}
    if options.get("directconnection") and options.get("replicaset"):
        findings.append(Finding(
            WARNING, "uri", "directConnection=true never follows a new primary after a failover; "
            "remove it and keep replicaSet=...",
        ))
    findings += _read_preference(database)

    def check(topic: str, probe: Callable[[], list[Finding]]) -> list[Finding]:
        try:
            return probe()
        except (PyMongoError, DacapoStoreError) as error:
            if isinstance(error, PyMongoError):
                error = database.translate(error, f"checking the {topic}", write=False, budget=0.0)
            return [Finding(PROBLEM, topic, redact_text(str(error), uri))]

    started = time.monotonic()
    hello: dict[str, Any] = {}
    connected = check("connection", lambda: [Finding(OK, "connection", _reach(database, started, hello))])
    findings += connected
    if connected[0].level == PROBLEM:
        database.client.close()
        return findings
    findings += check("server", lambda: _server(database, hello))
    findings += check("user", lambda: _privileges(database))
    findings += check("indexes", lambda: _indexes(database))
    findings += _write_concern(database, replica_set=bool(hello.get("setName") or hello.get("msg") == "isdbgrid"))
    database.client.close()
    return findings


def _reach(database: MongoDatabase, started: float, hello: dict[str, Any]) -> str:
    """Send ``hello`` (its reply goes into ``hello``); say how long the first reply took."""
    hello.update(database.client.admin.command("hello"))
    return f"reached in {1000 * (time.monotonic() - started):.0f} ms"


def _server(database: MongoDatabase, hello: dict[str, Any]) -> list[Finding]:
    build = database.client.admin.command("buildInfo")
    version = tuple(build.get("versionArray", [0, 0])[:2])
    found = [Finding(
        OK if version >= OLDEST_SERVER else PROBLEM, "server",
        f"MongoDB {build.get('version', '?')}" + ("" if version >= OLDEST_SERVER else
                                                  f"; MongoDB {OLDEST_SERVER[0]}.{OLDEST_SERVER[1]} or newer is needed"),
    )]
    if hello.get("setName"):
        members = len(hello.get("hosts", []))
        found.append(Finding(
            OK if members >= 3 else WARNING, "topology",
            f"replica set {hello['setName']!r}, primary {hello.get('primary')}, {members} data-bearing member(s)"
            + ("" if members >= 3 else "; use three for a majority that survives one member's loss"),
        ))
    elif hello.get("msg") == "isdbgrid":
        found.append(Finding(OK, "topology", "sharded cluster (mongos)"))
    else:
        found.append(Finding(
            WARNING, "topology", "a standalone server: no failover and no retryable writes; run a "
            "replica set (docker-compose.yml starts one)",
        ))
    return found


def _privileges(database: MongoDatabase) -> list[Finding]:
    status = database.db.command("connectionStatus", showPrivileges=True)
    info = status.get("authInfo", {})
    users = [user.get("user") for user in info.get("authenticatedUsers", [])]
    if not users:
        return [Finding(WARNING, "user", "not authenticated: the server runs without access control, so "
                        "anyone who reaches it may read and write")]
    roles = ", ".join(f"{role.get('role')}@{role.get('db')}" for role in info.get("authenticatedUserRoles", []))
    actions = set()
    for privilege in info.get("authenticatedUserPrivileges", []):
        resource = privilege.get("resource", {})
        if resource.get("anyResource") or (
            resource.get("db") in ("", database.db_name) and resource.get("collection", "") == ""
        ):
            actions |= set(privilege.get("actions", []))
    who = f"{', '.join(users)} ({roles or 'no roles'})"
    if "find" not in actions:
        return [Finding(PROBLEM, "user", f"{who} may not read database {database.db_name!r}")]
    if not WRITE_ACTIONS <= actions:
        return [Finding(WARNING, "user", f"{who} may only read database {database.db_name!r}: fine for "
                        "dashboards and the CLI's read commands; training and imports are refused")]
    if "createIndex" not in actions:
        return [Finding(WARNING, "user", f"{who} may write but not create indexes in {database.db_name!r}: "
                        "open the store once with a readWrite user to create them")]
    return [Finding(OK, "user", f"{who} may read and write database {database.db_name!r}")]


def _indexes(database: MongoDatabase) -> list[Finding]:
    found, present = [], 0
    for name, specs in _store_indexes():
        collection = database.collection(name)
        missing = database.missing_indexes(collection, specs)
        if missing is None:
            continue
        present += 1
        if missing:
            found.append(Finding(
                PROBLEM, "indexes", f"{collection.name} lacks {', '.join(missing)}: queries scan the "
                f"collection and uniqueness is not enforced; {_how_to_create(name, collection.name, specs, missing)}",
            ))
    if present == 0:
        return [Finding(WARNING, "indexes", f"database {database.db_name!r} holds no dacapo-store collections "
                        f"(prefix {database.collection_prefix!r}) yet: right database name?")]
    return found or [Finding(OK, "indexes", "every index the stores need is there")]


def _how_to_create(name: str, full_name: str, specs: tuple[IndexSpec, ...], missing: list[str]) -> str:
    """How to create the ``missing`` indexes of the store's collection ``name`` (``full_name``
    with the prefix): the store creates its own when opened for writing; GridFS creates its
    indexes only on a bucket's first upload, so those take a mongosh command."""
    if (name, specs) not in GRIDFS_INDEXES:
        return "open the store for writing with a readWrite user"
    commands = []
    for keys, options in specs:
        if options["name"] in missing:
            pattern = ", ".join(f"{field}: {direction}" for field, direction in keys)
            unique = ", {unique: true}" if options.get("unique") else ""
            commands.append(f'db.getCollection("{full_name}").createIndex({{{pattern}}}{unique})')
    return "create it in mongosh (readWrite user): " + "; ".join(commands)


def _read_preference(database: MongoDatabase) -> list[Finding]:
    """A warning if the URI sends reads elsewhere than to the primary."""
    mode = database.client.read_preference.document["mode"]
    if mode == "primary":
        return []
    return [Finding(
        WARNING, "read preference", f"readPreference={mode}: listings, scores, `best` and `latest` may lag "
        "behind the primary (a checkpoint just stored may be missing from them); checkpoints "
        "themselves are looked up on the primary and read from it when a secondary lacks them",
    )]


def _write_concern(database: MongoDatabase, replica_set: bool) -> list[Finding]:
    concern = database.write_concern.document
    found = [Finding(OK, "write concern", ", ".join(f"{key}={value!r}" for key, value in sorted(concern.items())))]
    if replica_set and concern.get("w") != "majority":
        found.append(Finding(WARNING, "write concern", f"w={concern.get('w')!r}: a checkpoint acknowledged "
                             "by fewer than a majority can be lost in a failover"))
    if concern.get("j") is False:
        found.append(Finding(WARNING, "write concern", "journal=false: an acknowledged write can be lost "
                             "if the server crashes"))
    if replica_set and "wtimeout" not in concern:
        found.append(Finding(WARNING, "write concern", "no wtimeoutMS: with a majority of members down, "
                             "writes wait indefinitely; add e.g. wtimeoutMS=60000 to the URI"))
    return found
