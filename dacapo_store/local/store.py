"""A local store location: one SQLite catalog shared by the weights, stats and run-config views."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ..config import StoreLocation
from ..store import Store
from ..health import Finding
from .catalog import CATALOG_FILENAME, Catalog
from .health import diagnose_local
from .run_configs import LocalRunConfigStore
from .stats import LocalStatsStore
from .weights import LocalWeightsStore


class LocalStore(Store):
    """The store in the directory ``location.target`` (options: ``read_only``).

    Raises (on first use of a view): StoreNotFoundError (read-only, no store there).
    """

    def __init__(self, location: StoreLocation, weights_options: dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(location, weights_options, **options)
        self._catalog: Catalog | None = None

    @property
    def catalog(self) -> Catalog:
        """The location's one catalog (opened on first use)."""
        return self._opened("_catalog", lambda: Catalog(self.location.target, **self.options))

    driver_errors = (sqlite3.Error,)

    def check_health(self) -> list[Finding]:
        return diagnose_local(Path(self.location.target))

    def explain_error(self, error: BaseException, message: str) -> str:
        """An SQLite error names the catalog file it came from and what is wrong with it."""
        if not isinstance(error, sqlite3.Error):
            return message
        catalog = Path(self.location.target) / CATALOG_FILENAME
        if catalog.is_dir():
            return f"the store's catalog {catalog} is a directory, not an SQLite database file"
        if "not a database" in message:
            return f"the store's catalog {catalog} is not an SQLite database (damaged or foreign): {message}"
        return f"the store's catalog {catalog} cannot be used: {message}"

    def _open_weights(self) -> LocalWeightsStore:
        return LocalWeightsStore(self.catalog, **self.weights_options)

    def _open_stats(self) -> LocalStatsStore:
        return LocalStatsStore(self.catalog)

    def _open_run_configs(self) -> LocalRunConfigStore:
        return LocalRunConfigStore(self.catalog)

    def _close_connection(self) -> None:
        """Nothing to close: SQLite connections are per thread and closed with it."""
