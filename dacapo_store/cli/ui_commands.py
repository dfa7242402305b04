"""The ``dacapo-store ui`` subcommand: serve the read-only web dashboard of a store (needs the
``ui`` extra; without it, one line says how to install it)."""

from __future__ import annotations

import shlex

import click

from ..config import resolve_store
from ..uri import redact_uri
from ..ui import UI_EXTRA_HINT
from ._shared import CliError, reporting_errors, store_option

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_ACTIVE_MINUTES = 10.0


def dashboard_command_line(store: str | None) -> str:
    """The exact ``dacapo-store ui --store ...`` command for the store that ``store`` (or the
    environment) designates: its directory, or its URI with the password replaced by ``***``.

    Raises:
        ConfigurationError: as :func:`~dacapo_store.config.resolve_store`.
    """
    location = resolve_store(store)
    target = redact_uri(location.target) if location.kind == "mongo" else location.target
    return shlex.join(["dacapo-store", "ui", "--store", target])


@click.command("ui")
@store_option
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to listen on. The dashboard has no login: keep 127.0.0.1 (this machine "
              "only) and reach it through an SSH tunnel, unless everyone on the network may read the store.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="Port to listen on.")
@click.option("--active-minutes", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_ACTIVE_MINUTES,
              show_default=True, metavar="N",
              help="A run shows as training while its newest checkpoint is at most N minutes old.")
@reporting_errors
def ui_command(store: str | None, host: str, port: int, active_minutes: float) -> None:
    """Serve a read-only web dashboard of the store: every run (sortable, filterable, refreshed
    while open), one run's loss and score curves, checkpoints and config, and runs compared on
    one plot. Reads only (a MongoDB `read` role or read-only media will do). Needs the ui extra:
    pip install 'dacapo-store[ui]'."""
    try:
        from ..ui.app import create_app
        from ..ui.queries import open_dashboard_stores
        from ..ui.serving import serve
    except ImportError as error:
        missing = (error.name or "a dependency").split(".")[0]
        raise CliError(f"{UI_EXTRA_HINT} ({missing} is not installed)") from None
    stores = open_dashboard_stores(store)
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"Dashboard of the store {resolve_store(store)}, read-only, at http://{shown_host}:{port}/ (Ctrl-C stops it).")
    serve(create_app(stores, active_minutes), host, port)


def register(group: click.Group) -> None:
    """Add ``ui`` to ``group``."""
    group.add_command(ui_command)
