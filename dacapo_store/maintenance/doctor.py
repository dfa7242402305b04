"""``dacapo-store doctor``: what is wrong with a store's setup, found without changing anything.

Each backend checks itself (:meth:`dacapo_store.Store.check_health`): for MongoDB the URI and
its read preference, connectivity, server version and topology, the user's privileges, the
indexes and the write concern; for a local store that it exists, whether this user may write
it, and the catalog's integrity.
"""

from __future__ import annotations

from ..config import StoreLocation
from ..health import OK, OLDEST_SERVER, PROBLEM, WARNING, Finding
from ..store import open_store

__all__ = ["OK", "OLDEST_SERVER", "PROBLEM", "WARNING", "Finding", "diagnose"]


def diagnose(location: StoreLocation) -> list[Finding]:
    """Check the store at ``location``; never raises for what it finds."""
    return open_store(location).check_health()
