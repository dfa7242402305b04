"""A MongoDB store location: one client (one :class:`MongoDatabase`) shared by the weights,
stats and run-config views."""

from __future__ import annotations

from typing import Any

from pymongo.errors import PyMongoError

from ..config import StoreLocation
from ..health import Finding
from ..store import Store
from .connection import MongoDatabase
from .health import diagnose_mongo
from .run_configs import MongoRunConfigStore
from .stats import MongoStatsStore
from .weights import MongoWeightsStore


class MongoStore(Store):
    """The store at the URI ``location.target``, database ``location.db_name`` (options:
    ``read_only``, ``write_concern``, ``retry``, ``collection_prefix``).

    The client is made on first use of a view (raises then: ConfigurationError for a
    malformed URI or an unescaped password, never shown).
    """

    driver_errors = (PyMongoError,)

    def __init__(self, location: StoreLocation, weights_options: dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(location, weights_options, **options)
        self._database: MongoDatabase | None = None

    @property
    def database(self) -> MongoDatabase:
        """The location's one client and database (made on first use)."""
        return self._opened("_database", lambda: MongoDatabase(self.location.target, self.location.db_name, **self.options))

    def check_health(self) -> list[Finding]:
        """Checked on a read-only connection of its own that retries nothing, so that an
        unreachable server is reported at once (closed before returning)."""
        return diagnose_mongo(self.location.target, self.location.db_name)

    def _open_weights(self) -> MongoWeightsStore:
        return MongoWeightsStore(self.database, **self.weights_options)

    def _open_stats(self) -> MongoStatsStore:
        return MongoStatsStore(self.database)

    def _open_run_configs(self) -> MongoRunConfigStore:
        return MongoRunConfigStore(self.database)

    def _close_connection(self) -> None:
        if self._database is not None:
            self._database.close()
