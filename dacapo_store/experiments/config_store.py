"""The run config stores, importable from the experiment layer as before: the contract lives in
:mod:`dacapo_store.run_configs`, each backend's store in its catalog package
(:mod:`dacapo_store.local.run_configs`, :mod:`dacapo_store.mongo.run_configs`)."""

from __future__ import annotations

import os
from typing import Any

from ..local.run_configs import LocalRunConfigStore
from ..mongo.run_configs import MongoRunConfigStore
from ..run_configs import (
    RunConfigConflictError,
    RunConfigNotFoundError,
    RunConfigStore,
    canonical_json,
    config_differences,
)
from ..store import open_store

__all__ = [
    "LocalRunConfigStore",
    "MongoRunConfigStore",
    "RunConfigConflictError",
    "RunConfigNotFoundError",
    "RunConfigStore",
    "canonical_json",
    "config_differences",
    "create_run_config_store",
]


def create_run_config_store(store: str | os.PathLike | None = None, **options: Any) -> RunConfigStore:
    """Open the run config store beside the weights and stats stores that ``store`` (or the
    environment) designates (see :func:`dacapo_store.resolve_store`); ``options`` go to the
    store's constructor (e.g. ``read_only=True``).

    Raises:
        ConfigurationError, StoreConnectionError, StoreNotFoundError (read-only, no store there).
    """
    return open_store(store, **options).run_configs
