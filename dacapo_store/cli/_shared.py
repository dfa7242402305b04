"""What every subcommand shares: opening the store of ``--store`` (:func:`open_stores`, the one
place a test may substitute), the options, one-line errors, and the output helpers (JSON,
tables, sizes, progress bars).

Failures print one line ``error: ...`` (never a password) and exit with status 1; usage errors
exit 2.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any

import click

from ..config import resolve_store
from ..errors import DacapoStoreError
from ..maintenance.summary import known_runs
from ..stats_store import StatsStore
from ..store import Store, driver_errors, open_store
from ..uri import redact_text
from ..weights_store import WeightsStore


class Stores:
    """The weights and stats views of the store location designated by one ``--store`` value,
    on one connection, opened on first use (read-only if ``read_only``)."""

    def __init__(self, store: str | None, read_only: bool = False) -> None:
        self.store = store
        self.read_only = read_only
        self._opened: Store | None = None

    def _location(self) -> Store:
        if self._opened is None:
            self._opened = open_store(self.store, read_only=self.read_only)
        return self._opened

    @property
    def weights(self) -> WeightsStore:
        """The weights store (opened on first access; raises as :func:`create_weights_store`)."""
        return self._location().weights

    @property
    def stats(self) -> StatsStore:
        """The stats store (opened on first access; raises as :func:`create_stats_store`)."""
        return self._location().stats

    def require_run(self, run: str) -> str:
        """Return ``run`` if the store knows it.

        Raises:
            UnknownRunError: no checkpoint, statistic or score of ``run`` is stored.
        """
        if run not in known_runs(self.weights, self.stats):
            raise UnknownRunError(f"unknown run {run!r} (`dacapo-store runs` lists the stored runs)")
        return run


def open_stores(store: str | None, read_only: bool = False) -> Stores:
    """The stores that every subcommand uses, read-only for the read commands (tests may
    replace this function)."""
    return Stores(store, read_only)


class UnknownRunError(DacapoStoreError, LookupError):
    """The store holds nothing of the named run."""


class CliError(click.ClickException):
    """A failure shown as one line ``error: ...`` with exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _one_line(error: BaseException, store: str | None) -> str:
    """The error's message on one line, without pymongo's topology dump or any password (of
    the store's URI in every form, and of any MongoDB URI in the message), as the store's
    backend explains it (an SQLite error names the local catalog it came from)."""
    message = str(error).split(", Topology Description:")[0]
    try:
        location = resolve_store(store)
    except DacapoStoreError:
        location = None
    uri = location.target if location is not None and location.kind == "mongo" else None
    message = " ".join(redact_text(message, uri).split()) or type(error).__name__
    return message if location is None else open_store(location).explain_error(error, message)


def reporting_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn store, value, connection, file-system and catalog errors into :class:`CliError`
    (exit status 1). A closed standard output (``BrokenPipeError``) is left to the command
    group, which exits quietly (see :mod:`dacapo_store.cli`)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            raise
        except (DacapoStoreError, ValueError, TypeError, OSError, *driver_errors()) as error:
            raise CliError(_one_line(error, kwargs.get("store"))) from error

    return wrapper


def say_which_store(store: str | None) -> None:
    """Name the store a listing reads, on stderr (standard output stays the listing alone).

    Raises:
        ConfigurationError: as :func:`~dacapo_store.config.resolve_store`.
    """
    click.echo(f"store: {resolve_store(store)}", err=True)


def store_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--store PATH|URI`` (passed to the command as ``store``, default ``None``)."""
    return click.option(
        "--store",
        metavar="PATH|URI",
        default=None,
        help="Store directory or mongodb:// URI (default: $DACAPO_STORE_URI, dacapo.yaml, local).",
    )(command)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the ``--json`` flag (passed to the command as ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(command)


def to_jsonable(value: Any) -> Any:
    """Plain JSON data: dataclasses as dicts, NaN and infinities as ``null``."""
    if is_dataclass(value):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON (via :func:`to_jsonable`: NaN and infinities as ``null``)."""
    click.echo(json.dumps(to_jsonable(value), indent=2, allow_nan=False))


def human_bytes(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: numbers right-aligned, text left-aligned ("" cells are blank)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    numeric = [  # a column of numbers (blank cells of continuation lines aside)
        any(isinstance(row[i], (int, float)) for row in rows)
        and all(isinstance(row[i], (int, float)) or row[i] == "" for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric)
        ).rstrip()

    return "\n".join([line(headers)] + [line(row) for row in cells])


def format_time(timestamp: float) -> str:
    """POSIX time as local ``YYYY-MM-DD HH:MM:SS``."""
    return datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


def format_score(value: float) -> str:
    """A score with 6 significant digits (``nan`` for NaN)."""
    return f"{value:.6g}"


def progress(total: int | None, desc: str, unit: str = "B") -> Any:
    """A tqdm bar on stderr, shown only on a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024,
        disable=None, leave=False, file=sys.stderr,
    )


DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smhdw]?)\s*$")
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Duration(click.ParamType):
    """A duration such as ``90``, ``90s``, ``30m``, ``2h``, ``7d`` or ``1w``, in seconds."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        """Return ``value`` in seconds (numbers pass through); a malformed value is a usage error."""
        if isinstance(value, (int, float)):
            return float(value)
        match = DURATION.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not a duration (e.g. 3600, 90s, 30m, 2h, 7d)", param, ctx)
        return float(match[1]) * DURATION_UNITS[match[2]]
