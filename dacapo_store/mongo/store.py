"""A MongoDB store location: one client (one :class:`MongoDatabase`) shared by the weights,
stats and run-config views."""

from __future__ import annotations

from typing import Any

from ..config import StoreLocation
from ..store import Store
from .connection import MongoDatabase
from .run_configs import MongoRunConfigStore
from .stats import MongoStatsStore
from .weights import MongoWeightsStore


class MongoStore(Store):
    """The store at the URI ``location.target``, database ``location.db_name`` (options:
    ``read_only``, ``write_concern``, ``retry``, ``collection_prefix``).

    Raises:
        ConfigurationError: a malformed URI or an unescaped password (never shown).
    """

    def __init__(self, location: StoreLocation, weights_options: dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(location, weights_options, **options)
        self.database = MongoDatabase(location.target, location.db_name, **options)

    def _open_weights(self) -> MongoWeightsStore:
        return MongoWeightsStore(self.database, **self.weights_options)

    def _open_stats(self) -> MongoStatsStore:
        return MongoStatsStore(self.database)

    def _open_run_configs(self) -> MongoRunConfigStore:
        return MongoRunConfigStore(self.database)

    def _close_connection(self) -> None:
        self.database.close()
