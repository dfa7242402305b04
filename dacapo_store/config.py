"""Where the stores live: resolving the store setting and opening stores.

Resolution order (the first that is set wins):

1. an explicit ``store`` argument (the CLI's ``--store``): a directory path or a MongoDB URI;
2. the environment variable ``DACAPO_STORE_URI`` (same forms);
3. a DaCapo options file ``dacapo.yaml`` (``type: files`` with ``runs_base_dir``, or
   ``type: mongo`` with ``mongo_db_host`` and ``mongo_db_name``), found via
   ``$DACAPO_OPTIONS_FILE``, ``./dacapo.yaml``, ``~/.config/dacapo/dacapo.yaml``;
4. the local default directory: ``$XDG_DATA_HOME/dacapo-store``, else
   ``~/.local/share/dacapo-store``.
"""

from __future__ import annotations

import difflib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from .errors import ConfigurationError, ConfigurationWarning
from .local import LocalStatsStore, LocalWeightsStore
from .mongo import MongoStatsStore, MongoWeightsStore
from .stats_store import StatsStore
from .uri import check_credentials, is_mongodb_uri, redact_text, redact_uri
from .weights_store import WeightsStore

T = TypeVar("T")

STORE_ENV = "DACAPO_STORE_URI"
PREFIX_ENV = "DACAPO_STORE_COLLECTION_PREFIX"
OPTIONS_FILE_ENV = "DACAPO_OPTIONS_FILE"
DEFAULT_DB_NAME = "dacapo"
OPTIONS_FILE_KEYS = (
    "compute_context", "compute_context_config", "mongo_db_host", "mongo_db_name", "runs_base_dir", "type",
)
"""The keys of a ``dacapo.yaml``: DaCapo 0.3.5's ``DaCapoConfig`` fields (``type``,
``runs_base_dir``, ``compute_context``, ``mongo_db_host``, ``mongo_db_name``) and older
DaCapo's ``compute_context_config``. dacapo-store reads ``type``, ``runs_base_dir`` and the
``mongo_db_*`` keys; any other key draws a :class:`ConfigurationWarning`."""


@dataclass(frozen=True)
class StoreLocation:
    """A resolved store: ``kind`` is ``"local"`` (``target`` a directory) or ``"mongo"``
    (``target`` a URI, ``db_name`` the database); ``source`` says where the setting came from."""

    kind: str
    target: str
    db_name: str
    source: str

    def __str__(self) -> str:
        if self.kind == "mongo":
            return f"{redact_uri(self.target)} (database {self.db_name!r}, from {self.source})"
        return f"{self.target} (from {self.source})"


def default_local_dir() -> Path:
    """The default local store directory (``$XDG_DATA_HOME/dacapo-store`` or
    ``~/.local/share/dacapo-store``)."""
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "dacapo-store"


def options_file_candidates() -> list[Path]:
    """The DaCapo options files looked at, in order."""
    candidates = []
    if os.environ.get(OPTIONS_FILE_ENV):
        candidates.append(Path(os.environ[OPTIONS_FILE_ENV]))
    candidates += [Path.cwd() / "dacapo.yaml", Path.home() / ".config" / "dacapo" / "dacapo.yaml"]
    return candidates


def location_from_value(value: str, source: str, db_name: str | None = None) -> StoreLocation:
    """Interpret a store setting (a MongoDB URI or a directory).

    Raises:
        ConfigurationError: empty value, or a malformed MongoDB URI (an unescaped password among
            others, never shown), naming ``source``.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"store setting from {source} is empty or not a string: {value!r}")
    value = value.strip()
    if is_mongodb_uri(value):
        return StoreLocation("mongo", value, db_name or _database_in_uri(value, source), source)
    if "://" in value:
        raise ConfigurationError(
            f"store setting from {source} is neither a directory nor a mongodb:// URI: "
            f"{redact_uri(value)!r}"
        )
    return StoreLocation("local", str(Path(value).expanduser()), DEFAULT_DB_NAME, source)


def _database_in_uri(uri: str, source: str) -> str:
    from .mongo.connection import database_named_in

    check_credentials(uri, f"store setting from {source}")
    try:
        return database_named_in(uri) or DEFAULT_DB_NAME
    except Exception as error:  # pymongo raises several types for malformed URIs
        raise ConfigurationError(
            f"store setting from {source} is not a valid MongoDB URI ({redact_uri(uri)}): "
            f"{redact_text(str(error), uri)}"
        ) from None


def location_from_options_file(path: Path) -> StoreLocation:
    """Read a DaCapo ``dacapo.yaml``.

    Raises:
        ConfigurationError: unreadable YAML, or a missing/bad ``type``, ``runs_base_dir``,
            ``mongo_db_host`` or ``mongo_db_name``, naming the file.
    """
    source = f"options file {path}"
    try:
        options = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigurationError(f"cannot read {source}: {error}") from None
    if not isinstance(options, dict):
        raise ConfigurationError(f"{source} must hold a mapping, got {type(options).__name__}")
    warn_about_unknown_keys(options, source)
    kind = options.get("type", "files")
    if kind == "files":
        base = options.get("runs_base_dir")
        if base is None:
            return StoreLocation("local", str(default_local_dir()), DEFAULT_DB_NAME, source)
        return location_from_value(str(base), f"{source} (runs_base_dir)")
    if kind == "mongo":
        host = options.get("mongo_db_host")
        name = options.get("mongo_db_name", DEFAULT_DB_NAME)
        if not isinstance(host, str) or not is_mongodb_uri(host):
            raise ConfigurationError(f"{source}: mongo_db_host must be a mongodb:// URI, got {host!r}")
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{source}: mongo_db_name must be a non-empty string, got {name!r}")
        return location_from_value(host, f"{source} (mongo_db_host)", db_name=name)
    raise ConfigurationError(f"{source}: type must be 'files' or 'mongo', got {kind!r}")


def warn_about_unknown_keys(options: dict, source: str) -> None:
    """Warn (:class:`ConfigurationWarning`) about each key of an options file that neither
    DaCapo nor dacapo-store knows, suggesting the closest known key: a misspelled
    ``runs_base_dir`` would otherwise silently fall back to the default store."""
    for key in sorted(map(str, set(options) - set(OPTIONS_FILE_KEYS))):
        close = difflib.get_close_matches(key, OPTIONS_FILE_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        warnings.warn(
            f"{source}: unknown key {key!r} is ignored{hint}; the known keys are "
            f"{', '.join(OPTIONS_FILE_KEYS)}",
            ConfigurationWarning,
            stacklevel=2,
        )


def resolve_store(store: str | os.PathLike | None = None, like_dacapo: bool = False) -> StoreLocation:
    """Resolve the store setting in the documented order (see module docstring).

    Args:
        store: an explicit path or MongoDB URI.
        like_dacapo: find the options file as DaCapo 0.3.5 does (``dacapo.options``): a
            ``$DACAPO_OPTIONS_FILE`` naming no file is passed over (with a
            ConfigurationWarning) for ``./dacapo.yaml``, then ``~/.config/dacapo/dacapo.yaml``,
            so that dacapo-store and DaCapo read the same file.

    Raises:
        ConfigurationError: a bad value, naming the setting and where it came from (also
            ``$DACAPO_OPTIONS_FILE`` naming a file that does not exist, unless ``like_dacapo``).
    """
    if store is not None:
        return location_from_value(os.fspath(store), "the store argument")
    if os.environ.get(STORE_ENV):
        return location_from_value(os.environ[STORE_ENV], f"${STORE_ENV}")
    named = os.environ.get(OPTIONS_FILE_ENV)
    if named and not Path(named).is_file():
        if not like_dacapo:
            raise ConfigurationError(f"${OPTIONS_FILE_ENV} names {named}, which is not a file")
        warnings.warn(
            f"${OPTIONS_FILE_ENV} names {named}, which is not a file: passed over, as DaCapo does "
            "(next: ./dacapo.yaml, ~/.config/dacapo/dacapo.yaml)",
            ConfigurationWarning,
            stacklevel=2,
        )
    for candidate in options_file_candidates():
        if candidate.is_file():
            return location_from_options_file(candidate)
    return StoreLocation("local", str(default_local_dir()), DEFAULT_DB_NAME, "the default")


def _open_one(
    store: str | os.PathLike | StoreLocation | None, local: Callable[..., T], mongo: Callable[..., T], **options: Any
) -> T:
    """Resolve ``store`` (unless it is a resolved :class:`StoreLocation` already) and build
    ``local(basedir, **options)`` or ``mongo(uri, db_name, **options)`` for it: one view opened
    on its own connection (:func:`dacapo_store.open_store` opens a location once for all its
    views). A MongoDB
    store's collection prefix comes from ``$DACAPO_STORE_COLLECTION_PREFIX`` when set (and not
    given in ``options``).

    Raises:
        ConfigurationError, StoreConnectionError.
    """
    location = store if isinstance(store, StoreLocation) else resolve_store(store)
    if location.kind == "mongo":
        if PREFIX_ENV in os.environ:
            options.setdefault("collection_prefix", os.environ[PREFIX_ENV])
        return mongo(location.target, location.db_name, **options)
    return local(location.target, **options)


def create_weights_store(store: str | os.PathLike | StoreLocation | None = None, **options: Any) -> WeightsStore:
    """Open the weights store that ``store`` (or the environment) designates; ``options`` go to
    the store's constructor (e.g. ``read_only=True``).

    Raises:
        ConfigurationError, StoreConnectionError, StoreNotFoundError (read-only, no store there).
    """
    return _open_one(store, LocalWeightsStore, MongoWeightsStore, **options)


def create_stats_store(store: str | os.PathLike | StoreLocation | None = None, **options: Any) -> StatsStore:
    """Open the stats store that ``store`` (or the environment) designates; ``options`` go to
    the store's constructor (e.g. ``read_only=True``).

    Raises:
        ConfigurationError, StoreConnectionError, StoreNotFoundError (read-only, no store there).
    """
    return _open_one(store, LocalStatsStore, MongoStatsStore, **options)
