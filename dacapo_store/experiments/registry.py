"""The plug-in registry: a config's ``type`` name -> its config class.

A ``type`` in a config dict is resolved, in this order:

1. a name registered in this process with :func:`register` (the built-in plug-ins of
   :mod:`dacapo_store.experiments.plugins` are registered this way);
2. an installed entry point of the kind's group (``dacapo_store.architectures``,
   ``dacapo_store.tasks``, ``dacapo_store.trainers``, ``dacapo_store.datasplits``,
   ``dacapo_store.starts``) whose name is the type and whose value is ``module:ConfigClass``;
3. an import path ``package.module:ConfigClass`` (``dacapo-store train`` also looks for the
   module in the config file's directory and the working directory, after the installed
   packages: see :func:`add_plugin_search_paths`).

The class must derive from the kind's base config (e.g. :class:`.configs.ArchitectureConfig`).
Resolving a type imports code, so only load run configs from stores you trust.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .configs import PLUGIN_KINDS, ConfigError, PluginConfig

C = TypeVar("C", bound=type[PluginConfig])

_REGISTRY: dict[str, dict[str, type[PluginConfig]]] = {kind: {} for kind in PLUGIN_KINDS}


def entry_point_group(kind: str) -> str:
    """The entry point group of plug-in ``kind`` (e.g. ``dacapo_store.architectures``)."""
    return f"dacapo_store.{kind}s"


def register(kind: str, name: str) -> Callable[[C], C]:
    """Class decorator: register a config class as plug-in type ``name`` of ``kind``.

    Raises:
        ValueError: unknown kind, a name containing ``:``, or a name taken by another class.
        TypeError: the class does not derive from the kind's base config.
    """

    def decorate(cls: C) -> C:
        _check_kind(kind)
        if ":" in name or not name:
            raise ValueError(f"plug-in type names must be non-empty and free of ':', got {name!r}")
        if not (isinstance(cls, type) and issubclass(cls, PLUGIN_KINDS[kind])):
            raise TypeError(f"{cls!r} must derive from {PLUGIN_KINDS[kind].__name__} to be a {kind}")
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{kind} type {name!r} is already registered to {existing.__qualname__}")
        _REGISTRY[kind][name] = cls
        cls.type_name = name
        return cls

    return decorate


def registered_types(kind: str) -> list[str]:
    """The type names of ``kind`` registered in this process or installed as entry points."""
    _check_kind(kind)
    _load_builtins()
    installed = {entry.name for entry in importlib.metadata.entry_points(group=entry_point_group(kind))}
    return sorted(set(_REGISTRY[kind]) | installed)


def plugin_class(kind: str, type_name: str) -> type[PluginConfig]:
    """Resolve a ``type`` name of plug-in ``kind`` to its config class (see module docstring).

    Raises:
        ConfigError: the type is unknown, cannot be imported, or is not a config of ``kind``.
    """
    _check_kind(kind)
    if not isinstance(type_name, str) or not type_name:
        raise ConfigError(f"{kind} config needs a 'type' (a non-empty string), got {type_name!r}")
    _load_builtins()
    if type_name in _REGISTRY[kind]:
        return _REGISTRY[kind][type_name]
    if ":" in type_name:
        return _checked(kind, type_name, _import_path(type_name))
    for entry in importlib.metadata.entry_points(group=entry_point_group(kind), name=type_name):
        cls = _checked(kind, type_name, entry.load())
        return register(kind, type_name)(cls)
    raise ConfigError(
        f"unknown {kind} type {type_name!r}; known: {registered_types(kind)} "
        f"(or give an import path 'package.module:ConfigClass')"
    )


def add_plugin_search_paths(*directories: str | os.PathLike) -> None:
    """Let import-path types (``package.module:ConfigClass``) be found in ``directories`` too,
    as ``python -m`` finds modules in the working directory, so a plug-in next to its config
    needs no installation and no ``PYTHONPATH``. The directories go after the installed
    packages (a file in them never shadows an installed module); ones already searched are
    skipped."""
    searched = {os.path.abspath(entry or os.curdir) for entry in sys.path}
    for directory in directories:
        directory = os.path.abspath(directory)
        if directory not in searched:
            sys.path.append(directory)
            searched.add(directory)


def type_name_of(cls: type[PluginConfig]) -> str:
    """The ``type`` written into a config dict: the registered name, else the import path."""
    if cls.type_name is not None and _REGISTRY[cls.kind].get(cls.type_name) is cls:
        return cls.type_name
    return f"{cls.__module__}:{cls.__qualname__}"


def plugin_config_from_dict(kind: str, data: Mapping[str, Any]) -> PluginConfig:
    """Build a plug-in config of ``kind`` from its dict (``type`` plus the class's fields).

    Raises:
        ConfigError: not a mapping, an unknown type, or bad fields.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{kind} config must be a mapping, got {type(data).__name__}")
    fields = dict(data)
    cls = plugin_class(kind, fields.pop("type", None))
    return cls.from_dict(fields)


def _check_kind(kind: str) -> None:
    if kind not in PLUGIN_KINDS:
        raise ValueError(f"unknown plug-in kind {kind!r}; kinds are {sorted(PLUGIN_KINDS)}")


def _load_builtins() -> None:
    importlib.import_module("dacapo_store.experiments.plugins")


def _import_path(path: str) -> Any:
    module_name, _, qualname = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for attribute in qualname.split("."):
            target = getattr(target, attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"cannot import plug-in {path!r}: {error}") from None
    return target


def _checked(kind: str, type_name: str, cls: Any) -> type[PluginConfig]:
    base = PLUGIN_KINDS[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{kind} type {type_name!r} resolves to {cls!r}, which does not derive from {base.__name__}")
    return cls
