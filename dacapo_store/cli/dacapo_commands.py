"""``dacapo-store import-dacapo``: bring existing DaCapo runs into the store.

The work is done by :mod:`dacapo_store.integrations.dacapo_import`; this module parses the
options, shows progress and prints the report. It needs DaCapo only to name validation
scores (see that module).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from ..integrations.dacapo_import import (
    CheckpointFile,
    FileStatsSource,
    ImportReport,
    MongoDatabase,
    MongoStatsSource,
    dacapo_layout_source,
    dacapo_mongo_location,
    find_checkpoints,
    import_dacapo_runs,
)
from ._shared import (
    CliError,
    echo_json,
    format_table,
    human_bytes,
    json_option,
    open_stores,
    progress,
    reporting_errors,
    say_which_store,
    store_option,
)


@click.command("import-dacapo")
@click.argument("runs_base_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--run", "run", default=None, help="Import only this run.")
@click.option(
    "--dacapo-mongo", metavar="URI", default=None,
    help="DaCapo's MongoDB, whose training_stats and validation_scores to import "
    "(default: the one DaCapo's dacapo.yaml names, if it says type: mongo).",
)
@click.option("--dacapo-db", metavar="NAME", default=None,
              help="DaCapo's database (default: the URI's, else 'dacapo').")
@store_option
@json_option
@reporting_errors
def import_dacapo_command(
    runs_base_dir: Path, run: str | None, dacapo_mongo: str | None, dacapo_db: str | None,
    store: str | None, as_json: bool,
) -> None:
    """Import DaCapo's runs under RUNS_BASE_DIR: every checkpoint
    (<run>/checkpoints/iterations/<N>, both DaCapo formats), and DaCapo's training stats and
    validation scores (RUNS_BASE_DIR/stats, and DaCapo's MongoDB). What the store holds
    already is left as it is, so running it again imports nothing new. Every imported
    checkpoint is verified; pickled code is never run."""
    say_which_store(store)
    stores = open_stores(store)
    sources: list[Any] = []
    if (runs_base_dir / "stats").is_dir():
        sources.append(FileStatsSource(runs_base_dir / "stats"))
    mongo = _dacapo_mongo(dacapo_mongo, dacapo_db)
    if mongo is not None:
        sources.append(MongoStatsSource(mongo.db, f"DaCapo's MongoDB {mongo.display} (database {mongo.db_name!r})"))
    layouts, layouts_from = dacapo_layout_source(
        runs_base_dir, (mongo.uri or None) if mongo is not None else None, mongo.db_name if mongo is not None else None
    )
    files, _ = find_checkpoints(runs_base_dir, run)
    reading_dacapo = mongo.reporting_errors("reading DaCapo's stats") if mongo is not None else nullcontext()
    with reading_dacapo, progress(sum(item.size for item in files), "importing checkpoints") as bar:

        def advance(item: CheckpointFile) -> None:
            bar.update(item.size)

        report = import_dacapo_runs(
            runs_base_dir, stores.weights, stores.stats, run, sources, layouts, on_checkpoint=advance
        )
    if as_json:
        echo_json({"runs": report.runs, "notes": report.notes, "nothing_new": report.nothing_new})
    else:
        _print_report(report, [source.description for source in sources], layouts_from)
    if report.failures:
        raise CliError(f"{len(report.failures)} checkpoint file(s) could not be imported (listed above)")


def _dacapo_mongo(uri: str | None, db_name: str | None) -> MongoDatabase | None:
    """DaCapo's MongoDB: the given URI, else the one DaCapo's options file names, else none."""
    located = dacapo_mongo_location(uri, db_name)
    if located is None:
        if db_name is not None:
            raise click.UsageError("--dacapo-db needs --dacapo-mongo (or a dacapo.yaml with type: mongo)")
        return None
    return MongoDatabase(*located)


def _print_report(report: ImportReport, sources: list[str], layouts_from: str) -> None:
    click.echo(f"stats from: {', '.join(sources) or 'none (no stats folder, no DaCapo MongoDB)'}")
    click.echo(f"validation score names from: {layouts_from}")
    if not report.runs:
        click.echo("no DaCapo runs found")
    else:
        rows = [
            [
                r.run,
                _counts(r.checkpoints_imported, r.checkpoints_present),
                _counts(r.training_stats_imported, r.training_stats_present),
                _counts(r.scores_imported, r.scores_present),
            ]
            for r in report.runs
        ]
        click.echo(format_table(["RUN", "CHECKPOINTS", "TRAINING STATS", "SCORES"], rows))
    totals = [
        sum(r.checkpoints_imported for r in report.runs),
        sum(r.training_stats_imported for r in report.runs),
        sum(r.scores_imported for r in report.runs),
    ]
    present = [
        sum(r.checkpoints_present for r in report.runs),
        sum(r.training_stats_present for r in report.runs),
        sum(r.scores_present for r in report.runs),
    ]
    if report.nothing_new:
        click.echo(
            f"nothing new to import: {present[0]} checkpoint(s), {present[1]} training stat(s) and "
            f"{present[2]} score(s) are in the store already"
        )
    else:
        size = human_bytes(sum(r.bytes_imported for r in report.runs))
        failed = f"; {len(report.failures)} checkpoint file(s) FAILED" if report.failures else ""
        click.echo(
            f"imported {totals[0]} checkpoint(s) ({size}, each verified), {totals[1]} training stat(s) "
            f"and {totals[2]} score(s); {sum(present)} item(s) were in the store already{failed}"
        )
    notes = report.notes + [f"run {r.run!r}: {note}" for r in report.runs for note in r.notes]
    for note in notes:
        click.echo(f"note: {note}")
    for failure in report.failures:
        click.echo(f"FAILED {failure}", err=True)


def _counts(imported: int, present: int) -> str:
    return f"{imported} new, {present} present"


COMMANDS = (import_dacapo_command,)


def register(group: click.Group) -> None:
    """Add this module's subcommands to ``group``."""
    for command in COMMANDS:
        group.add_command(command)
