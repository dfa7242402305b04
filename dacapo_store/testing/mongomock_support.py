"""Make mongomock usable as a test server: GridFS on it, and atomic operations under threads
(see shared field notes)."""

from __future__ import annotations

import functools
import threading
import types
from typing import Any, Callable

_SERVER_LOCK = threading.RLock()
"""Serializes every mongomock operation that reads or changes documents, as a server does."""

_ATOMIC_OPERATIONS = ("_insert", "_update", "_delete", "_find_and_modify", "_iter_documents", "_get_dataset")
"""The ``mongomock.Collection`` internals that every insert, update, delete and query goes through."""


def _atomic(operation: Callable[..., Any]) -> Callable[..., Any]:
    """``operation`` run under the server lock, its result (maybe a lazy generator) read whole
    while the lock is held, so no caller sees a document half-changed by another thread."""

    @functools.wraps(operation)
    def run_atomically(*args: Any, **kwargs: Any) -> Any:
        with _SERVER_LOCK:
            result = operation(*args, **kwargs)
            if isinstance(result, types.GeneratorType):
                return iter(list(result))
            return result

    run_atomically.__dacapo_store_atomic__ = True  # type: ignore[attr-defined]
    return run_atomically


def patch_mongomock() -> None:
    """Patch mongomock in place so that it behaves as a server where our tests need it to.
    Idempotent.

    - GridFS: ``GridFSBucket`` reads ``client.options.timeout``; mongomock's client has no
      ``options``.
    - Atomic operations: mongomock checks a unique index by inserting (or updating) the
      document, counting matches and rolling back on a duplicate. Under threads another
      operation can run inside that window: an update of the other document then fails with
      E11000, or both inserters fail and neither document exists afterwards. A server never
      shows that state; each operation here runs under one lock.
    """
    import mongomock
    import mongomock.gridfs

    mongomock.gridfs.enable_gridfs_integration()
    if not hasattr(mongomock.MongoClient, "options"):
        mongomock.MongoClient.options = property(lambda self: types.SimpleNamespace(timeout=None))
    for name in _ATOMIC_OPERATIONS:
        operation = getattr(mongomock.Collection, name)
        if not getattr(operation, "__dacapo_store_atomic__", False):
            setattr(mongomock.Collection, name, _atomic(operation))


def mongomock_client() -> Any:
    """A fresh, patched ``mongomock.MongoClient`` (each one is its own empty server)."""
    patch_mongomock()
    import mongomock

    return mongomock.MongoClient()
