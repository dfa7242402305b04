"""Operations subcommands of ``dacapo-store``: listing, best, export/import, prune, gc,
verify, du, plot and doctor.

Every subcommand takes ``--store`` (a directory or a ``mongodb://`` URI; unset, the store is
resolved as :func:`dacapo_store.config.resolve_store` documents) and opens its stores through
:func:`open_stores`, the one place a test may substitute. The read commands (runs, checkpoints,
scores, best, du, verify, plot, export, and prune/gc with ``--dry-run``) open them read-only:
they work with MongoDB's ``read`` role and on read-only directories, and a store that does not
exist is an error naming it (only writes create a store). Listings take ``--json``. Failures
print one line ``error: ...`` (never a password) and exit with status 1; usage errors exit 2.
"""

from __future__ import annotations

import click

from . import listing_commands, maintenance_commands, transfer_commands
from ._shared import (  # the helpers' former home: kept importable
    CliError,
    Duration,
    Stores,
    UnknownRunError,
    echo_json,
    format_score,
    format_table,
    format_time,
    human_bytes,
    json_option,
    open_stores,
    progress,
    reporting_errors,
    say_which_store,
    store_option,
    to_jsonable,
)

__all__ = [
    "COMMANDS",
    "CliError",
    "Duration",
    "Stores",
    "UnknownRunError",
    "echo_json",
    "format_score",
    "format_table",
    "format_time",
    "human_bytes",
    "json_option",
    "open_stores",
    "progress",
    "register",
    "reporting_errors",
    "say_which_store",
    "store_option",
    "to_jsonable",
]

COMMANDS = (*listing_commands.COMMANDS, *transfer_commands.COMMANDS, *maintenance_commands.COMMANDS)


def register(group: click.Group) -> None:
    """Add the operations subcommands to ``group``."""
    for command in COMMANDS:
        group.add_command(command)
