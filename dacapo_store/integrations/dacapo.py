"""Make DaCapo store its checkpoints, training stats and validation scores in dacapo-store.

One line, before DaCapo's stores are first created (at the top of a training script)::

    from dacapo_store.integrations.dacapo import install; install()

After :func:`install`, DaCapo's ``create_weights_store()`` and ``create_stats_store()`` (in
``dacapo.store.create_store`` and wherever a ``dacapo.*`` module imported them by name, such as
``dacapo.train``, ``dacapo.validate``, ``dacapo.apply`` and ``dacapo.predict``) return a
:class:`~dacapo_store.integrations.dacapo_adapters.DacapoWeightsStore` and a
:class:`~dacapo_store.integrations.dacapo_adapters.DacapoStatsStore`, which implement DaCapo's
store interfaces on dacapo-store stores. DaCapo's ``train_run``, ``validate``, ``apply`` and
``predict`` run unchanged. DaCapo's run configs stay in DaCapo's config store.
:func:`uninstall` puts DaCapo's own functions back.

This module imports DaCapo (the optional extra ``pip install 'dacapo-store[dacapo]'``);
importing :mod:`dacapo_store` itself never does.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

try:
    from dacapo.store import create_store as _dacapo_create_store
except ImportError as error:  # depends on the environment
    _missing = error.name or ""
    if _missing and _missing != "dacapo" and not _missing.startswith("dacapo."):
        raise ModuleNotFoundError(
            f"DaCapo is installed, but importing it failed: no module named {_missing!r} (DaCapo 0.3.5 "
            "imports fibsem_tools and cellmap_models when it is imported; see docs/dacapo.md, 'Installing DaCapo')",
            name=_missing,
        ) from error
    raise ImportError(
        "dacapo_store.integrations.dacapo needs DaCapo: pip install 'dacapo-store[dacapo]'"
    ) from error

from .. import config
from ..stats_store import StatsStore
from ..weights_store import WeightsStore
from .dacapo_adapters import DacapoStatsStore, DacapoWeightsStore

__all__ = ["install", "uninstall", "create_weights_store", "create_stats_store"]

DACAPO_MODULES = ("dacapo.store.create_store", "dacapo.train", "dacapo.validate", "dacapo.apply", "dacapo.predict")
"""Modules imported by :func:`install` so that their bindings are replaced at once; any other
``dacapo.*`` module already imported is rebound too, and one imported later binds the
replacement from ``dacapo.store.create_store``."""


class _Installation:
    """The stores of one :func:`install`: the given ones, or those that dacapo-store's
    configuration designates when DaCapo asks (opened once per resolved location and
    collection prefix)."""

    def __init__(self, weights: WeightsStore | None, stats: StatsStore | None) -> None:
        self.weights = weights
        self.stats = stats
        self._opened: dict[tuple[str, config.StoreLocation, str | None], Any] = {}
        self._lock = threading.Lock()

    def weights_store(self) -> WeightsStore:
        return self.weights if self.weights is not None else self._open("weights", config.create_weights_store)

    def stats_store(self) -> StatsStore:
        return self.stats if self.stats is not None else self._open("stats", config.create_stats_store)

    def _open(self, kind: str, opener: Callable[[config.StoreLocation], Any]) -> Any:
        location = config.resolve_store(like_dacapo=True)  # the options file DaCapo reads
        if location.kind == "local":  # a relative runs_base_dir means another store after a chdir
            location = dataclasses.replace(location, target=os.path.abspath(location.target))
        key = (kind, location, os.environ.get(config.PREFIX_ENV))
        with self._lock:
            if key not in self._opened:
                self._opened[key] = opener(location)
            return self._opened[key]


_installation: _Installation | None = None


def create_weights_store() -> DacapoWeightsStore:
    """DaCapo's ``create_weights_store``, answered by dacapo-store while installed (DaCapo's
    own function otherwise)."""
    installation = _installation
    if installation is None:
        return _ORIGINALS["create_weights_store"]()
    return DacapoWeightsStore(installation.weights_store(), installation.stats_store())


def create_stats_store() -> DacapoStatsStore:
    """DaCapo's ``create_stats_store``, answered by dacapo-store while installed (DaCapo's
    own function otherwise)."""
    installation = _installation
    if installation is None:
        return _ORIGINALS["create_stats_store"]()
    return DacapoStatsStore(installation.stats_store())


_REPLACEMENTS = {"create_weights_store": create_weights_store, "create_stats_store": create_stats_store}
_ORIGINALS = {name: getattr(_dacapo_create_store, name) for name in _REPLACEMENTS}


def install(weights_store: WeightsStore | None = None, stats_store: StatsStore | None = None) -> None:
    """Make DaCapo use dacapo-store for its weights and stats.

    Args:
        weights_store: where DaCapo's checkpoints go; ``None``: the store that dacapo-store's
            configuration designates (``$DACAPO_STORE_URI``, then ``dacapo.yaml``, then the
            local default), resolved each time DaCapo creates a store.
        stats_store: where DaCapo's training stats and validation scores go; ``None`` as above.
            Give both on the same place (same directory or database): dacapo-store's own
            ``retrieve_best`` reads the scores beside the checkpoints.

    Calling it again replaces the stores in use.

    Raises:
        TypeError: a store that is not a dacapo-store ``WeightsStore`` / ``StatsStore``.
    """
    global _installation
    if weights_store is not None and not isinstance(weights_store, WeightsStore):
        raise TypeError(
            f"weights_store must be a dacapo_store WeightsStore or None, got {type(weights_store).__name__}"
        )
    if stats_store is not None and not isinstance(stats_store, StatsStore):
        raise TypeError(f"stats_store must be a dacapo_store StatsStore or None, got {type(stats_store).__name__}")
    for module in DACAPO_MODULES:
        importlib.import_module(module)
    _installation = _Installation(weights_store, stats_store)
    _rebind(_ORIGINALS, _REPLACEMENTS)


def uninstall() -> None:
    """Give DaCapo its own ``create_weights_store`` / ``create_stats_store`` back, in every
    ``dacapo.*`` module that bound dacapo-store's. Does nothing if not installed."""
    global _installation
    _rebind(_REPLACEMENTS, _ORIGINALS)
    _installation = None


def _rebind(old: dict[str, Any], new: dict[str, Any]) -> None:
    """In every imported ``dacapo`` module, bind ``new[name]`` where ``old[name]`` is bound."""
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "dacapo" or module_name.startswith("dacapo.")):
            continue
        for name, function in old.items():
            if vars(module).get(name) is function:
                setattr(module, name, new[name])
