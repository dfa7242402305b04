"""The listing subcommands: runs, checkpoints, scores, best and du (read-only; ``--json`` for
scripts; the store is named on stderr so that standard output stays the listing alone)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from ..errors import CheckpointNotFoundError
from ..maintenance.summary import RunSummary, known_runs, summarize_run
from ._shared import (
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
)


@click.command("runs")
@store_option
@json_option
@click.option("--wide", is_flag=True, help="One line per run, listing every (dataset, criterion).")
@reporting_errors
def runs_command(store: str | None, as_json: bool, wide: bool) -> None:
    """Every run: checkpoints, latest iteration, bytes, best iteration per criterion (and
    dataset): one line per criterion, or one line per run with --wide."""
    say_which_store(store)
    stores = open_stores(store, read_only=True)
    names = known_runs(stores.weights, stores.stats)
    with progress(len(names), "scanning runs", unit="run") as bar:
        summaries = []
        for name in names:
            summaries.append(summarize_run(stores.weights, stores.stats, name))
            bar.update()
    if as_json:
        return echo_json(summaries)
    if not summaries:
        return click.echo("no runs")
    if wide:
        rows = [
            [*_run_cells(s), ", ".join(f"{b.dataset}/{b.criterion}: {b.iteration}" for b in s.best) or "-"]
            for s in summaries
        ]
        return click.echo(format_table(["RUN", "CHECKPOINTS", "LATEST", "SIZE", "BEST ITERATION"], rows))
    rows = []
    for summary in summaries:
        best = _best_per_criterion(summary) or [("-", "-")]
        rows.append([*_run_cells(summary), *best[0]])
        rows.extend(["", "", "", "", *line] for line in best[1:])
    click.echo(format_table(["RUN", "CHECKPOINTS", "LATEST", "SIZE", "CRITERION", "BEST ITERATION (DATASET)"], rows))


def _run_cells(summary: RunSummary) -> list[Any]:
    """A run's name, checkpoints, latest iteration and size, as table cells."""
    latest = "-" if summary.latest_iteration is None else summary.latest_iteration
    return [summary.run, summary.checkpoints, latest, human_bytes(summary.bytes)]


def _best_per_criterion(summary: RunSummary) -> list[tuple[str, str]]:
    """``(criterion, "600 (validate_0, validate_1), 500 (validate_2)")`` per criterion: its
    best iterations, each with the datasets where it is best."""
    by_criterion: dict[str, dict[int, list[str]]] = {}
    for best in summary.best:
        by_criterion.setdefault(best.criterion, {}).setdefault(best.iteration, []).append(best.dataset)
    return [
        (
            criterion,
            ", ".join(
                f"{iteration} ({', '.join(sorted(datasets))})"
                for iteration, datasets in sorted(iterations.items(), key=lambda item: (-len(item[1]), item[0]))
            ),
        )
        for criterion, iterations in sorted(by_criterion.items())
    ]


@click.command("checkpoints")
@click.argument("run")
@store_option
@json_option
@reporting_errors
def checkpoints_command(run: str, store: str | None, as_json: bool) -> None:
    """The checkpoints of RUN: iteration, creation time, size, parts and digests."""
    stores = open_stores(store, read_only=True)
    checkpoints = stores.weights.list_checkpoints(stores.require_run(run))
    if as_json:
        return echo_json([{**asdict(info), "size": info.size} for info in checkpoints])
    if not checkpoints:
        return click.echo(f"run {run!r} has no checkpoints")
    rows = [
        [
            info.iteration, format_time(info.created), human_bytes(info.size),
            "+".join(info.parts), short_digest(info.parts["model"].digest) if "model" in info.parts else "-",
        ]
        for info in checkpoints
    ]
    click.echo(format_table(["ITERATION", "CREATED", "SIZE", "PARTS", "MODEL DIGEST"], rows))


def short_digest(digest: str) -> str:
    """``"<algorithm>:<hex>"`` cut to the algorithm and 12 hex digits, for tables."""
    algorithm, _, hex_digits = digest.partition(":")
    return f"{algorithm}:{hex_digits[:12]}"


@click.command("scores")
@click.argument("run")
@click.option("--dataset", default=None, help="Only this dataset.")
@click.option("--criterion", default=None, help="Only this criterion.")
@store_option
@json_option
@reporting_errors
def scores_command(
    run: str, dataset: str | None, criterion: str | None, store: str | None, as_json: bool
) -> None:
    """The validation scores of RUN (optionally of one dataset and/or criterion)."""
    stores = open_stores(store, read_only=True)
    scores = stores.stats.retrieve_validation_scores(stores.require_run(run), dataset, criterion)
    if as_json:
        return echo_json(scores)
    if not scores:
        return click.echo(f"run {run!r} has no matching validation scores")
    rows = [
        [s.iteration, s.dataset, s.criterion, json.dumps(s.parameters, sort_keys=True), format_score(s.value)]
        for s in scores
    ]
    click.echo(format_table(["ITERATION", "DATASET", "CRITERION", "PARAMETERS", "SCORE"], rows))


@click.command("best")
@click.argument("run")
@click.argument("dataset")
@click.argument("criterion")
@store_option
@json_option
@reporting_errors
def best_command(run: str, dataset: str, criterion: str, store: str | None, as_json: bool) -> None:
    """The best iteration of RUN on DATASET by CRITERION: score, parameters, checkpoint."""
    stores = open_stores(store, read_only=True)
    score = stores.stats.best_validation_score(stores.require_run(run), dataset, criterion)
    try:
        size: int | None = stores.weights.checkpoint_info(run, score.iteration).size
    except CheckpointNotFoundError:
        size = None
    if as_json:
        return echo_json({**asdict(score), "checkpoint_size": size})
    direction = "higher" if score.higher_is_better else "lower"
    click.echo(
        f"iteration:  {score.iteration}\n"
        f"score:      {format_score(score.value)} ({criterion}, {direction} is better, on {dataset})\n"
        f"parameters: {json.dumps(score.parameters, sort_keys=True)}\n"
        f"checkpoint: {'not stored' if size is None else f'stored ({human_bytes(size)})'}"
    )


@click.command("du")
@store_option
@json_option
@reporting_errors
def du_command(store: str | None, as_json: bool) -> None:
    """Bytes of checkpoints per run and in total."""
    say_which_store(store)
    weights = open_stores(store, read_only=True).weights
    usage = [
        {"run": run, "checkpoints": len(checkpoints), "bytes": sum(c.size for c in checkpoints)}
        for run in weights.list_runs()
        for checkpoints in [weights.list_checkpoints(run)]
    ]
    total = {"checkpoints": sum(u["checkpoints"] for u in usage), "bytes": sum(u["bytes"] for u in usage)}
    if as_json:
        return echo_json({"runs": usage, "total": total})
    rows = [[u["run"], u["checkpoints"], u["bytes"], human_bytes(u["bytes"])] for u in usage]
    rows.append(["TOTAL", total["checkpoints"], total["bytes"], human_bytes(total["bytes"])])
    click.echo(format_table(["RUN", "CHECKPOINTS", "BYTES", "SIZE"], rows))


COMMANDS = (runs_command, checkpoints_command, scores_command, best_command, du_command)
