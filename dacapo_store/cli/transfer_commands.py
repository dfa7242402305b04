"""The transfer subcommands: export a checkpoint to a file, import a file as a checkpoint (the
file handling is :mod:`dacapo_store.checkpoint_files`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..checkpoint_files import export_checkpoint, exported_size, load_checkpoint_file, weights_from_file_state
from ..errors import CheckpointExistsError
from ._shared import human_bytes, open_stores, progress, reporting_errors, store_option


@click.command("export")
@click.argument("run")
@click.argument("iteration", type=click.IntRange(min=0))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (a plain state-dict file for torch.load).")
@click.option("--no-optimizer", is_flag=True, help="Leave out the optimizer state.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@store_option
@reporting_errors
def export_command(
    run: str, iteration: int, output: Path, no_optimizer: bool, force: bool, store: str | None
) -> None:
    """Write checkpoint ITERATION of RUN to a file holding {"model": ..., "optimizer": ...}."""
    if output.exists() and not force:
        raise FileExistsError(f"{output} exists (use --force to overwrite it)")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"cannot export to {output}: the directory {output.parent} does not exist")
    weights_store = open_stores(store, read_only=True).weights
    expected = exported_size(weights_store, run, iteration, optimizer=not no_optimizer)  # the bar's estimate
    with progress(expected, f"exporting {output.name}") as bar:
        export_checkpoint(weights_store, run, iteration, output, optimizer=not no_optimizer, written=bar.update)
    click.echo(
        f"exported checkpoint {iteration} of run {run!r} to {output} ({human_bytes(output.stat().st_size)})"
    )


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("run")
@click.argument("iteration", type=click.IntRange(min=0))
@click.option("--overwrite", is_flag=True,
              help="Replace checkpoint ITERATION of RUN if it is stored (readers see the old or the new one, whole).")
@store_option
@reporting_errors
def import_command(file: Path, run: str, iteration: int, overwrite: bool, store: str | None) -> None:
    """Store FILE (a checkpoint as `export` writes it, or a bare model state dict) as
    checkpoint ITERATION of RUN. The file must load with torch.load(weights_only=True)."""
    state = load_checkpoint_file(file)
    weights = weights_from_file_state(state, file)
    try:
        info = open_stores(store).weights.put_weights(run, iteration, weights, overwrite=overwrite)
    except CheckpointExistsError as error:
        if overwrite or "already stored" not in str(error):
            raise
        raise CheckpointExistsError(f"{error} (use --overwrite to replace it)") from None
    parts = "model and optimizer" if weights.optimizer is not None else "model only"
    click.echo(f"imported {file} as checkpoint {iteration} of run {run!r} ({parts}, {human_bytes(info.size)})")


COMMANDS = (export_command, import_command)
