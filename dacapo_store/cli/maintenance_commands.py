"""The maintenance subcommands: prune, gc, verify, plot and doctor (``--dry-run`` and the
checks open the store read-only)."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import resolve_store
from ..maintenance.retention import prune
from ..maintenance.verification import verify_checkpoints
from ._shared import (
    CliError,
    Duration,
    echo_json,
    human_bytes,
    json_option,
    open_stores,
    progress,
    reporting_errors,
    store_option,
)


@click.command("prune")
@click.argument("run")
@click.option("--keep-last", type=click.IntRange(min=1), default=None, metavar="N",
              help="Keep the N latest checkpoints.")
@click.option("--keep-every", type=click.IntRange(min=1), default=None, metavar="M",
              help="Keep checkpoints whose iteration is a multiple of M.")
@click.option("--keep-best", is_flag=True,
              help="Also keep the best checkpoint of every post-processing parameter set.")
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@store_option
@json_option
@reporting_errors
def prune_command(
    run: str, keep_last: int | None, keep_every: int | None, keep_best: bool, dry_run: bool,
    store: str | None, as_json: bool,
) -> None:
    """Remove checkpoints of RUN that no rule keeps. The latest checkpoint and the best of
    every (dataset, criterion) are always kept."""
    if keep_last is None and keep_every is None and not keep_best:
        raise click.UsageError("give at least one of --keep-last, --keep-every, --keep-best")
    stores = open_stores(store, read_only=dry_run)
    report = prune(
        stores.weights, stores.stats, stores.require_run(run), keep_last, keep_every, keep_best, dry_run
    )
    if as_json:
        return echo_json({
            "run": report.run, "dry_run": dry_run, "bytes_freed": report.bytes_freed,
            "removed": [{"iteration": i.iteration, "size": i.size} for i in report.removed],
            "kept": [{"iteration": it, "reasons": why} for it, why in sorted(report.kept.items())],
        })
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(report.removed)} checkpoint(s) of run {run!r}, "
               f"{'freeing' if not dry_run else 'which frees'} {human_bytes(report.bytes_freed)}")
    for info in report.removed:
        click.echo(f"  - iteration {info.iteration} ({human_bytes(info.size)})")
    click.echo(f"kept {len(report.kept)} checkpoint(s):")
    for iteration, reasons in sorted(report.kept.items()):
        click.echo(f"  + iteration {iteration}: {', '.join(reasons)}")


@click.command("gc")
@click.option("--older-than", type=Duration(), default="1h", show_default=True,
              help="Uploads silent for longer than this are abandoned (e.g. 90s, 30m, 2h, 7d).")
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@store_option
@json_option
@reporting_errors
def gc_command(older_than: float, dry_run: bool, store: str | None, as_json: bool) -> None:
    """Remove abandoned uploads, orphaned payloads and GridFS chunks (never a live upload)."""
    report = open_stores(store, read_only=dry_run).weights.collect_garbage(older_than=older_than, dry_run=dry_run)
    if as_json:
        return echo_json({"dry_run": dry_run, "bytes_freed": report.bytes_freed, "items": report.items})
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(report.items)} item(s), {human_bytes(report.bytes_freed)}")
    for item in report.items:
        click.echo(f"  - {item}")


@click.command("verify")
@click.argument("run", required=False)
@store_option
@json_option
@reporting_errors
def verify_command(run: str | None, store: str | None, as_json: bool) -> None:
    """Re-check the size and digest of every checkpoint (of RUN, or of all runs). Exits with
    status 1 and names each bad checkpoint if any fails."""
    stores = open_stores(store, read_only=True)
    runs = [stores.require_run(run)] if run is not None else stores.weights.list_runs()
    checkpoints = [info for name in runs for info in stores.weights.list_checkpoints(name)]
    with progress(sum(info.size for info in checkpoints), "verifying") as bar:
        failures = verify_checkpoints(stores.weights, checkpoints, lambda info: bar.update(info.size))
    if as_json:
        echo_json({"checked": len(checkpoints), "failures": failures})
    else:
        for failure in failures:
            click.echo(f"BAD  run {failure.run!r} iteration {failure.iteration}: {failure.reason}")
        if not failures:
            click.echo(f"ok: {len(checkpoints)} checkpoint(s) of {len(runs)} run(s) intact")
    if failures:
        raise CliError(f"{len(failures)} of {len(checkpoints)} checkpoint(s) failed verification")


@click.command("plot")
@click.argument("run")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PNG file to write.")
@store_option
@reporting_errors
def plot_command(run: str, output: Path, store: str | None) -> None:
    """Validation score curves per dataset and criterion, training loss, best marked (PNG)."""
    from ..plotting import plot_run

    stores = open_stores(store, read_only=True)
    width, height = plot_run(stores.stats, stores.require_run(run), output)
    click.echo(f"wrote {output} ({width}x{height} px)")


@click.command("doctor")
@store_option
@json_option
@reporting_errors
def doctor_command(store: str | None, as_json: bool) -> None:
    """Check the store's setup without changing anything: for MongoDB connectivity, server
    version and topology, the user's privileges, indexes and write concern; for a directory,
    that it exists, permissions and the catalog's integrity. Exits with status 1 if any
    problem is found."""
    from ..maintenance.doctor import PROBLEM, diagnose

    findings = diagnose(resolve_store(store))
    if as_json:
        echo_json(findings)
    else:
        for finding in findings:
            click.echo(f"{finding.level:<8} {finding.topic}: {finding.message}")
    problems = sum(finding.level == PROBLEM for finding in findings)
    if problems:
        raise CliError(f"{problems} problem(s) found")


COMMANDS = (prune_command, gc_command, verify_command, plot_command, doctor_command)
