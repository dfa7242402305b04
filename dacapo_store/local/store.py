"""A local store location: one SQLite catalog shared by the weights, stats and run-config views."""

from __future__ import annotations

from typing import Any

from ..config import StoreLocation
from ..store import Store
from .catalog import Catalog
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
        if self._catalog is None:
            self._catalog = Catalog(self.location.target, **self.options)
        return self._catalog

    def _open_weights(self) -> LocalWeightsStore:
        return LocalWeightsStore(self.catalog, **self.weights_options)

    def _open_stats(self) -> LocalStatsStore:
        return LocalStatsStore(self.catalog)

    def _open_run_configs(self) -> LocalRunConfigStore:
        return LocalRunConfigStore(self.catalog)

    def _close_connection(self) -> None:
        """Nothing to close: SQLite connections are per thread and closed with it."""
