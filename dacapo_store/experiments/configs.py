"""Typed configuration objects that round-trip to plain dicts (and so to YAML and the database).

A config is a frozen, keyword-only dataclass. Its fields are checked (and, where lossless,
converted: a YAML list becomes a tuple, an int a float, ``"1e-3"`` a float) when it is built,
so a bad value fails at once with a message that names the field. ``to_dict()`` gives plain
JSON-able data that ``from_dict()`` turns back into an equal config.

Plug-in configs (:class:`PluginConfig` subclasses) also carry a ``type`` name in their dicts;
:mod:`.registry` maps that name back to the class.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from ..errors import DacapoStoreError

NoneType = type(None)
C = TypeVar("C", bound="Config")


class ConfigError(DacapoStoreError, ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the field."""


class Config:
    """Base of typed configs: subclasses are ``@dataclasses.dataclass(frozen=True, kw_only=True)``."""

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for field in dataclasses.fields(self):
            value = check_value(getattr(self, field.name), hints[field.name], field.name)
            object.__setattr__(self, field.name, value)
        self.check()

    def check(self) -> None:
        """Raise :class:`ConfigError` if the (type-checked) field values are out of range or
        inconsistent. Subclasses override this; the base accepts everything."""

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain data (dicts, lists, str, int, float, bool, None)."""
        return {field.name: to_plain(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build the config from plain data.

        Raises:
            ConfigError: ``data`` is not a mapping, misses a required field, has an unknown
                field, or a value of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} must be given a mapping, got {type(data).__name__}")
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names, key=str)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; its fields are {sorted(names)}")
        missing = sorted(
            field.name
            for field in dataclasses.fields(cls)
            if field.name not in data
            and field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ConfigError(f"{cls.__name__} is missing the required field(s) {missing}")
        return cls(**data)


class PluginConfig(Config):
    """A config that builds one plug-in object (an architecture, a task, ...).

    ``kind`` names the plug-in kind (set by each kind's base class); ``type_name`` is the name
    the class is registered under (set by :func:`.registry.register`).
    """

    kind: ClassVar[str]
    type_name: ClassVar[str | None] = None

    @abstractmethod
    def build(self) -> Any:
        """Return the plug-in object this config describes."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data with the plug-in's ``type`` first (see :func:`.registry.type_name_of`)."""
        from .registry import type_name_of

        return {"type": type_name_of(type(self)), **super().to_dict()}


class ArchitectureConfig(PluginConfig):
    """Builds an :class:`~.interfaces.Architecture`."""

    kind = "architecture"


class TaskConfig(PluginConfig):
    """Builds a :class:`~.interfaces.Task`."""

    kind = "task"


class TrainerConfig(PluginConfig):
    """Builds a :class:`~.interfaces.Trainer`."""

    kind = "trainer"


class DataSplitConfig(PluginConfig):
    """Builds a :class:`~.interfaces.DataSplit`."""

    kind = "datasplit"


class StartConfig(PluginConfig):
    """Builds a :class:`~.interfaces.Start` (how a new run's model is initialised)."""

    kind = "start"


PLUGIN_KINDS: dict[str, type[PluginConfig]] = {
    base.kind: base for base in (ArchitectureConfig, TaskConfig, TrainerConfig, DataSplitConfig, StartConfig)
}
"""Plug-in kind name -> the base class its configs derive from."""


def to_plain(value: Any) -> Any:
    """Turn a config value into plain data (configs to dicts, tuples to lists)."""
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [to_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    return value


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` checked against a type annotation (converted where lossless).

    Supports ``Any``, ``bool``, ``int``, ``float``, ``str``, ``None``, unions/optionals,
    ``Literal``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[str, X]`` and
    :class:`Config` subclasses (a plug-in config may be given as its dict).

    Raises:
        ConfigError: the value does not fit, naming ``where``.
    """
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        return _check_union(value, args, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if annotation is NoneType:
        if value is not None:
            raise ConfigError(f"{where} must be null, got {value!r}")
        return None
    if origin is tuple:
        return tuple(_check_items(value, args, where))
    if origin is list:
        return list(_check_items(value, (args[0], ...), where))
    if origin in (dict, Mapping):
        return _check_mapping(value, args, where)
    if isinstance(annotation, type) and issubclass(annotation, Config):
        return _check_config(value, annotation, where)
    if annotation in (bool, int, float, str):
        return _check_scalar(value, annotation, where)
    raise TypeError(f"{where}: unsupported config annotation {annotation!r}")


def _check_scalar(value: Any, annotation: type, where: str) -> Any:
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is str and isinstance(value, str):
        return value
    if annotation is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if annotation is float and not isinstance(value, bool):
        if isinstance(value, numbers.Real):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    raise ConfigError(f"{where} must be {annotation.__name__}, got {type(value).__name__} {value!r}")


def _check_union(value: Any, args: tuple[Any, ...], where: str) -> Any:
    if value is None and NoneType in args:
        return None
    errors = []
    for arg in args:
        if arg is NoneType:
            continue
        try:
            return check_value(value, arg, where)
        except ConfigError as error:
            errors.append(str(error))
    raise ConfigError(" or ".join(errors) if errors else f"{where} must be null, got {value!r}")


def _check_items(value: Any, args: tuple[Any, ...], where: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list, got {type(value).__name__} {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return [check_value(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if len(value) != len(args):
        raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}")
    return [check_value(item, arg, f"{where}[{i}]") for i, (item, arg) in enumerate(zip(value, args))]


def _check_mapping(value: Any, args: tuple[Any, ...], where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__} {value!r}")
    key_type, item_type = args or (str, Any)
    return {
        check_value(key, key_type, f"{where} key"): check_value(item, item_type, f"{where}[{key!r}]")
        for key, item in value.items()
    }


def _check_config(value: Any, annotation: type[Config], where: str) -> Config:
    if isinstance(value, annotation):
        return value
    if isinstance(value, Mapping):
        try:
            if issubclass(annotation, PluginConfig):
                from .registry import plugin_config_from_dict

                return plugin_config_from_dict(annotation.kind, value)
            return annotation.from_dict(value)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
    raise ConfigError(f"{where} must be a {annotation.__name__} or a mapping, got {type(value).__name__}")
