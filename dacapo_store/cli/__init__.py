"""The ``dacapo-store`` command line: one click group; each module adds its subcommands.

A closed standard output (``dacapo-store demo | head -1``) ends the command quietly with status
141, what a shell reports for a command stopped by SIGPIPE (128 + 13), like ``cat`` or ``seq``
in the same place: ``set -o pipefail`` scripts see what they see for any other tool, and the
status tells "the reader stopped listening" apart from a failure (1). SIGPIPE itself stays
ignored (Python's default): restoring its default action would also kill the process when a
MongoDB connection drops mid-write.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import click

from ..errors import ConfigurationWarning
from . import dacapo_commands, experiment_commands, ops_commands, ui_commands

BROKEN_PIPE_EXIT_CODE = 141


class _Group(click.Group):
    """A click group whose commands end quietly when standard output is closed."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _silence_stdout()
            raise SystemExit(BROKEN_PIPE_EXIT_CODE) from None


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that flushing it at exit raises nothing more
    (the recipe of Python's documentation on SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real descriptor (e.g. a test runner's buffer)
        pass


_python_format_warning = warnings.formatwarning


def _format_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    """A configuration warning as one line ``warning: ...`` (others as Python shows them)."""
    if issubclass(category, ConfigurationWarning):
        return f"warning: {message}\n"
    return _python_format_warning(message, category, *args, **kwargs)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dacapo-store")
def main() -> None:
    """Training checkpoints and validation scores in MongoDB or a local store."""
    warnings.formatwarning = _format_warning


for _module in (experiment_commands, ops_commands, dacapo_commands, ui_commands):
    _module.register(main)
