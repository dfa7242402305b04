"""Experiment subcommands of ``dacapo-store``: ``demo`` (the main job) and ``train CONFIG.yaml``.

Both store the run config by name, train the run (resuming whatever the store already holds),
then print the best checkpoint per validation dataset and criterion, each loaded back with
``load_best`` and re-scored. Interrupted (Ctrl-C), they exit with status 130; running the same
command again continues the run. Failures print one line ``error: ...`` and exit with status 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click

from ..config import create_stats_store, create_weights_store, resolve_store
from ..experiments.config_store import RunConfigStore, create_run_config_store
from ..experiments.demo import DEMO_ITERATIONS, DEMO_RUN_NAME, demo_run_config
from ..experiments.report import best_rows, format_rows
from ..experiments.run import Run
from ..experiments.run_config import RunConfig
from ..experiments.train import train_run
from ..experiments.validate import Evaluation, evaluate, resolve_device
from ..stats_store import StatsStore
from ..weights_store import WeightsStore
from .ops_commands import reporting_errors, store_option

INTERRUPTED_EXIT_CODE = 130


@dataclass(frozen=True)
class ExperimentStores:
    """The run config, weights and stats stores of one ``--store`` value."""

    configs: RunConfigStore
    weights: WeightsStore
    stats: StatsStore

    @classmethod
    def open(cls, store: str | None) -> "ExperimentStores":
        """Open the three stores (raises ConfigurationError, StoreConnectionError)."""
        return cls(create_run_config_store(store), create_weights_store(store), create_stats_store(store))


def device_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--device`` option (checked by :func:`~dacapo_store.experiments.validate.resolve_device`)."""
    return click.option(
        "--device",
        default=None,
        metavar="DEVICE",
        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu).",
    )(command)


@click.command("demo")
@store_option
@device_option
@click.option(
    "--iterations", type=click.IntRange(min=1), default=DEMO_ITERATIONS, show_default=True,
    help="Training iterations.",
)
@click.option(
    "--name", default=None,
    help=f"Run name [default: {DEMO_RUN_NAME}, or {DEMO_RUN_NAME}-ITERATIONS with another --iterations].",
)
@reporting_errors
def demo_command(store: str | None, device: str | None, iterations: int, name: str | None) -> None:
    """Train a small 2D U-Net on synthetic data, checkpointing and validating into the store,
    then show its best checkpoints, loaded back from the store.

    Running it again continues the run (or just shows its results when it is complete).
    """
    if name is None:
        name = DEMO_RUN_NAME if iterations == DEMO_ITERATIONS else f"{DEMO_RUN_NAME}-{iterations}"
    config = demo_run_config(name, iterations)
    stores = ExperimentStores.open(store)
    run = _prepare(config, stores, store, device)
    click.echo(
        f"A {config.architecture_config.dims}D U-Net ({_parameter_count(run):,} parameters) learns "
        f"to segment noisy synthetic disks: {config.num_iterations} iterations, a checkpoint stored "
        f"and validated every {config.validation_interval}."
    )
    _say_how_the_run_stands(config, stores)
    untrained = evaluate(run, run.model, device)
    _train_and_report(run, stores, device, untrained)


@click.command("train")
@click.argument("config_file", metavar="CONFIG.yaml", type=click.Path(exists=True, dir_okay=False))
@store_option
@device_option
@reporting_errors
def train_command(config_file: str, store: str | None, device: str | None) -> None:
    """Train the run described by CONFIG.yaml (a RunConfig as YAML), resuming it if the store
    already holds part of it, then show its best checkpoints."""
    config = RunConfig.from_yaml_file(config_file)
    stores = ExperimentStores.open(store)
    run = _prepare(config, stores, store, device)
    _say_how_the_run_stands(config, stores)
    _train_and_report(run, stores, device, None)


def _prepare(config: RunConfig, stores: ExperimentStores, store: str | None, device: str | None) -> Run:
    """Say where the run trains, store ``config`` (the same config again is fine) and rebuild
    the run from the stored config."""
    click.echo(f"Run {config.name!r} in store {resolve_store(store)}, on {resolve_device(device)}.")
    stores.configs.store_run_config(config.to_dict())
    stored = RunConfig.from_dict(stores.configs.retrieve_run_config(config.name))
    return Run(stored, weights_store=stores.weights)


def _say_how_the_run_stands(config: RunConfig, stores: ExperimentStores) -> None:
    latest = stores.weights.latest_iteration(config.name)
    if latest is not None and latest >= config.num_iterations:
        click.echo(f"Run {config.name!r} is already trained: showing its results (--name starts a new run).")
    elif latest is not None:
        click.echo(f"Continuing run {config.name!r} from its checkpoint {latest}.")


def _train_and_report(
    run: Run, stores: ExperimentStores, device: str | None, untrained: Sequence[Evaluation] | None
) -> None:
    try:
        progress = click.get_text_stream("stderr").isatty()
        train_run(run, stores.weights, stores.stats, device=device, progress=progress)
    except KeyboardInterrupt:
        click.echo("\nInterrupted: run the same command again to continue from the last checkpoint.", err=True)
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
    rows = best_rows(run, stores.weights, stores.stats, untrained, device)
    if not rows:
        click.echo(f"Run {run.name!r} has no validation scores (no validation datasets).")
        return
    click.echo("\nBest checkpoint per validation dataset and criterion (from the stored scores):")
    click.echo(format_rows(rows))
    click.echo(
        "\n'load_best re-scored': the weights load_best returned, loaded into a fresh model and "
        "validated again."
    )
    if not all(row.reload_matches for row in rows):
        raise click.ClickException("load_best returned weights that do not reproduce their stored score")


def _parameter_count(run: Run) -> int:
    return sum(parameter.numel() for parameter in run.model.parameters())


def register(group: click.Group) -> None:
    """Add ``demo`` and ``train`` to ``group``."""
    group.add_command(demo_command)
    group.add_command(train_command)
