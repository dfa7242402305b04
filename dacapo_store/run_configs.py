"""The run config store contract: run configs by name, so that any machine can rebuild a run.

Configs are kept as canonical JSON text (sorted keys) beside their name, which is a value,
never a field name. A name holds one config forever: storing the same config again is a no-op,
storing a different one under a taken name raises :class:`RunConfigConflictError`. Each
backend keeps them in its catalog (:mod:`dacapo_store.local.run_configs`,
:mod:`dacapo_store.mongo.run_configs`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from .checks import check_json_value, check_name
from .errors import DacapoStoreError


class RunConfigConflictError(DacapoStoreError, ValueError):
    """A different run config is already stored under this name."""


class RunConfigNotFoundError(DacapoStoreError, LookupError):
    """No run config is stored under this name."""


def canonical_json(config: Mapping[str, Any]) -> str:
    """The stored text of a config dict (sorted keys, no NaN).

    Raises:
        TypeError / ValueError: the dict is not JSON-able.
    """
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_differences(stored: Any, new: Any, path: str = "") -> list[str]:
    """Describe where two config dicts differ: ``"path: stored X, new Y"`` per differing leaf."""
    if isinstance(stored, dict) and isinstance(new, dict):
        return [
            difference
            for key in sorted(set(stored) | set(new))
            for difference in config_differences(
                stored.get(key, "<absent>"), new.get(key, "<absent>"), f"{path}.{key}" if path else key
            )
        ]
    return [] if stored == new else [f"{path}: stored {stored!r}, new {new!r}"]


class RunConfigStore(ABC):
    """Run config dicts (as ``RunConfig.to_dict()`` gives them), unique by ``name``."""

    def store_run_config(self, config: Mapping[str, Any]) -> None:
        """Store ``config`` under ``config["name"]``; the same config again is a no-op.

        Raises:
            RunConfigConflictError: a different config is stored under that name (a ValueError).
            TypeError / ValueError: no valid ``name``, or the config is not JSON-able (as
                :func:`~dacapo_store.checks.check_json_value`: the message names the field).
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"a run config must be a mapping, got {type(config).__name__}")
        name = check_name(config.get("name"), "run")
        check_json_value(config, "run config")
        text = canonical_json(config)
        existing = self._insert(name, text)
        if existing is not None and existing != text:
            differences = "; ".join(config_differences(json.loads(existing), json.loads(text)))
            raise RunConfigConflictError(
                f"run {name!r} already has a different config stored ({differences}); "
                "choose another run name"
            )

    def retrieve_run_config(self, name: str) -> dict[str, Any]:
        """Return the config dict stored under ``name``.

        Raises:
            RunConfigNotFoundError: none is stored (a LookupError).
        """
        text = self._find(check_name(name, "run"))
        if text is None:
            raise RunConfigNotFoundError(f"no run config named {name!r} is stored")
        return json.loads(text)

    @abstractmethod
    def list_run_configs(self) -> list[str]:
        """The names of the stored run configs, sorted."""

    @abstractmethod
    def _insert(self, name: str, text: str) -> str | None:
        """Insert ``text`` under ``name`` unless the name is taken; return the text already
        stored under it (``None`` if it was inserted)."""

    @abstractmethod
    def _find(self, name: str) -> str | None:
        """The text stored under ``name``, or ``None``."""
