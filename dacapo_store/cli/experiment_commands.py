"""Placeholder until its subcommands land."""

import click


def register(group: click.Group) -> None:
    """Add this module's subcommands to ``group``."""
