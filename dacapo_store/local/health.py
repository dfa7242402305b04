"""The health check of a local store: that it exists, whether this user may write it, its
filesystem, and the catalog's integrity. Read-only: nothing is created or written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import DacapoStoreError
from ..health import OK, PROBLEM, WARNING, Finding
from .catalog import NETWORK_FS_ENV, Catalog, is_writable


def diagnose_local(path: Path) -> list[Finding]:
    """Check a local store directory (read-only: nothing is created or written)."""
    try:
        catalog = Catalog(path, read_only=True)
    except DacapoStoreError as error:
        return [Finding(PROBLEM, "store", str(error))]
    found = [Finding(OK, "store", str(catalog.basedir))]
    if catalog.network_filesystem is not None:
        allowed = catalog.journal_mode != "wal"
        found.append(Finding(
            WARNING, "filesystem",
            f"on a network filesystem ({catalog.network_filesystem}): "
            + (f"writes allowed by ${NETWORK_FS_ENV} (rollback journal; safe only if its locks work across hosts)"
               if allowed else "reading only; use MongoDB for runs on several nodes (see docs/deployment.md: Shared filesystems)"),
        ))
    if is_writable(catalog.basedir):
        found.append(Finding(OK, "permissions", "this user may write the store"))
    else:
        found.append(Finding(WARNING, "permissions", "not writable by this user: reading only"))
    try:
        result = catalog.query("PRAGMA quick_check")[0][0]
    except sqlite3.Error as error:
        result = str(error)
    found.append(Finding(OK if result == "ok" else PROBLEM, "catalog", f"integrity check: {result}"))
    return found
