"""One store per location: :func:`open_store` opens a directory or a ``mongodb://`` URI once
and hands out its weights, stats and run-config views, which share the location's one
connection (one SQLite catalog, or one ``MongoClient``).

    with dacapo_store.open_store("mongodb://host/lab") as store:
        store.weights.store_weights(run, iteration)
        store.stats.best_validation_score(run, dataset, criterion)
        store.run_configs.list_run_configs()
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

from .config import PREFIX_ENV, StoreLocation, resolve_store
from .health import Finding
from .run_configs import RunConfigStore
from .stats_store import StatsStore
from .weights_store import WeightsStore

T = TypeVar("T")


class Store(ABC):
    """The views of one store location over one shared connection, each opened on first use.

    Args:
        location: the resolved location.
        options: for every view (``read_only``; for MongoDB also ``write_concern``, ``retry``,
            ``collection_prefix``); :attr:`weights` also takes ``weights_options`` (e.g.
            ``stale_after``).

    Opening a view raises as that view's constructor (ConfigurationError,
    StoreConnectionError, StoreNotFoundError for a read-only store that does not exist).
    """

    driver_errors: tuple[type[BaseException], ...] = ()
    """The backend driver's exception types that a view's call may let through."""

    def __init__(self, location: StoreLocation, weights_options: dict[str, Any] | None = None, **options: Any) -> None:
        self.location = location
        self.options = options
        self.weights_options = dict(weights_options or {})
        self._weights: WeightsStore | None = None
        self._stats: StatsStore | None = None
        self._run_configs: RunConfigStore | None = None
        self._opening = threading.RLock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.location)!r})"

    @property
    def weights(self) -> WeightsStore:
        """The checkpoints (opened on first access)."""
        return self._opened("_weights", self._open_weights)

    @property
    def stats(self) -> StatsStore:
        """The training stats and validation scores (opened on first access)."""
        return self._opened("_stats", self._open_stats)

    @property
    def run_configs(self) -> RunConfigStore:
        """The run configs by name (opened on first access)."""
        return self._opened("_run_configs", self._open_run_configs)

    def _opened(self, attribute: str, open_it: Callable[[], T]) -> T:
        """The value of ``attribute``, made by ``open_it`` on first use: once, also when threads
        use the store for the first time at once (one connection, one view each)."""
        value = getattr(self, attribute)
        if value is None:
            with self._opening:
                value = getattr(self, attribute)
                if value is None:
                    value = open_it()
                    setattr(self, attribute, value)
        return value

    def close(self) -> None:
        """Finish background uploads of the weights view and close the connection (views
        handed out are unusable afterwards)."""
        try:
            if self._weights is not None:
                self._weights.flush()
        finally:
            self._close_connection()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @abstractmethod
    def check_health(self) -> list[Finding]:
        """Check the location's setup without changing anything (what ``dacapo-store doctor``
        shows); never raises for what it finds: a problem is a ``"problem"`` finding."""

    def explain_error(self, error: BaseException, message: str) -> str:
        """What ``error`` (whose one-line text is ``message``) means for this location (e.g. an
        SQLite error names the local catalog); ``message`` itself if the backend adds nothing."""
        return message

    @abstractmethod
    def _open_weights(self) -> WeightsStore: ...

    @abstractmethod
    def _open_stats(self) -> StatsStore: ...

    @abstractmethod
    def _open_run_configs(self) -> RunConfigStore: ...

    @abstractmethod
    def _close_connection(self) -> None: ...


def driver_errors() -> tuple[type[BaseException], ...]:
    """The exception types of the backends' drivers (SQLite's, pymongo's) that a store call
    may let through (a command line reports them as one line)."""
    from .local.store import LocalStore
    from .mongo.store import MongoStore

    return LocalStore.driver_errors + MongoStore.driver_errors


def open_store(
    store: str | os.PathLike | StoreLocation | None = None,
    weights_options: dict[str, Any] | None = None,
    **options: Any,
) -> Store:
    """Open the store that ``store`` (or the environment, see
    :func:`dacapo_store.resolve_store`) designates. A MongoDB store's collection prefix comes
    from ``$DACAPO_STORE_COLLECTION_PREFIX`` when set (and not given in ``options``).

    Raises:
        ConfigurationError: a bad store setting or a malformed URI (password never shown).
    """
    from .local.store import LocalStore
    from .mongo.store import MongoStore

    location = store if isinstance(store, StoreLocation) else resolve_store(store)
    if location.kind == "mongo":
        if PREFIX_ENV in os.environ:
            options.setdefault("collection_prefix", os.environ[PREFIX_ENV])
        return MongoStore(location, weights_options, **options)
    return LocalStore(location, weights_options, **options)
