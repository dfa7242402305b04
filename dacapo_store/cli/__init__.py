"""The ``dacapo-store`` command line: one click group; each module adds its subcommands."""

from __future__ import annotations

import click

from . import dacapo_commands, experiment_commands, ops_commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dacapo-store")
def main() -> None:
    """Training checkpoints and validation scores in MongoDB or a local store."""


for _module in (experiment_commands, ops_commands, dacapo_commands):
    _module.register(main)
