"""Make mongomock usable with pymongo's ``GridFSBucket`` (see shared field notes)."""

from __future__ import annotations

import types
from typing import Any


def patch_mongomock() -> None:
    """Patch mongomock in place so that GridFS works on a ``mongomock.MongoClient``.

    ``GridFSBucket`` reads ``client.options.timeout``; mongomock's client has no ``options``.
    Idempotent.
    """
    import mongomock
    import mongomock.gridfs

    mongomock.gridfs.enable_gridfs_integration()
    if not hasattr(mongomock.MongoClient, "options"):
        mongomock.MongoClient.options = property(lambda self: types.SimpleNamespace(timeout=None))


def mongomock_client() -> Any:
    """A fresh, patched ``mongomock.MongoClient`` (each one is its own empty server)."""
    patch_mongomock()
    import mongomock

    return mongomock.MongoClient()
