"""Experiment subcommands of ``dacapo-store``: ``demo`` (the main job) and ``train CONFIG.yaml``.

Both store the run config by name, train the run (resuming whatever the store already holds;
``--keep-last N`` prunes old checkpoints as it goes), then print the best checkpoint per
validation dataset and criterion, each read back from the store and re-scored, and check that
``load_best`` loads the same weights. Interrupted (Ctrl-C) at any point, they print one line and
exit with status 130; running the same command again continues the run. Failures print one
line ``error: ...`` and exit with status 1. On the CPU they use one torch thread unless
``--threads`` or ``$OMP_NUM_THREADS`` says otherwise; a progress bar shows on a terminal, and
one line per stored and validated checkpoint where there is none.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click
import torch

from ..config import resolve_store
from ..experiments.demo import DEMO_ITERATIONS, DEMO_RUN_NAME, demo_run_config
from ..experiments.registry import add_plugin_search_paths
from ..experiments.report import best_report, format_report
from ..experiments.run import Run
from ..experiments.run_config import RunConfig
from ..experiments.train import CheckpointProgress, train_run
from ..experiments.validate import Evaluation, evaluate, resolve_device
from ..maintenance.retention import RetentionPolicy
from ..run_configs import RunConfigStore
from ..stats_store import StatsStore
from ..store import open_store
from ..weights_store import WeightsStore
from ._shared import CliError, reporting_errors, store_option
from .ui_commands import dashboard_command_line

INTERRUPTED_EXIT_CODE = 130
DEFAULT_CPU_THREADS = 1
"""torch's CPU threads unless ``--threads`` or ``$OMP_NUM_THREADS`` says otherwise. torch's own
default, one per core, made the demo 2 to 10 times slower than one thread on a shared 2-core
machine (OpenMP threads wait for each other while other processes hold the cores); the
small models of a demo gain little from more (docs/getting-started.md, "Threads")."""


@dataclass(frozen=True)
class ExperimentStores:
    """The run config, weights and stats stores of one ``--store`` value."""

    configs: RunConfigStore
    weights: WeightsStore
    stats: StatsStore

    @classmethod
    def open(cls, store: str | None) -> "ExperimentStores":
        """Open the three views of the store location, on its one connection (raises
        ConfigurationError, StoreConnectionError)."""
        opened = open_store(store)
        return cls(opened.run_configs, opened.weights, opened.stats)


def device_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--device`` option (checked by :func:`~dacapo_store.experiments.validate.resolve_device`)."""
    return click.option(
        "--device",
        default=None,
        metavar="DEVICE",
        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu).",
    )(command)


def keep_last_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--keep-last N`` option: the retention policy applied while training."""
    return click.option(
        "--keep-last",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help="While training, remove checkpoints except the last N, the latest and the best "
        "per validation dataset and criterion (default: keep all).",
    )(command)


def async_checkpoint_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--async-checkpoint`` flag: store checkpoints in the background while training goes on."""
    return click.option(
        "--async-checkpoint",
        is_flag=True,
        help="Store each checkpoint in the background (a snapshot in CPU memory is uploaded while "
        "training goes on) and validate the model in memory, which holds the checkpoint's weights.",
    )(command)


def threads_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--threads N`` option: torch's CPU threads (see :func:`set_cpu_threads`)."""
    return click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help=f"CPU threads for torch (default: $OMP_NUM_THREADS if set, else {DEFAULT_CPU_THREADS}).",
    )(command)


def set_cpu_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads and return how many it uses: ``threads`` if given;
    else ``$OMP_NUM_THREADS`` as torch read it, if set; else :data:`DEFAULT_CPU_THREADS`."""
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    threads = DEFAULT_CPU_THREADS if threads is None else threads
    torch.set_num_threads(threads)
    return threads


def print_progress_line(progress: CheckpointProgress) -> None:
    """One line per stored and validated checkpoint, for output that is not a terminal."""
    click.echo(
        f"iteration {progress.iteration} of {progress.total}: mean loss {progress.loss:.4f}, "
        f"{progress.iterations_per_second:.1f} it/s; checkpoint stored and validated"
    )


def plural(count: int, noun: str) -> str:
    """``plural(1, "iteration")`` -> ``"1 iteration"``, ``plural(600, ...)`` -> ``"600 iterations"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def exiting_on_interrupt(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn Ctrl-C (KeyboardInterrupt) anywhere in ``command`` into one line on stderr and
    exit status 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("Interrupted: run the same command again to continue from the last checkpoint.", err=True)
            raise SystemExit(INTERRUPTED_EXIT_CODE) from None

    return wrapper


@click.command("demo")
@store_option
@device_option
@threads_option
@keep_last_option
@async_checkpoint_option
@click.option(
    "--iterations", type=click.IntRange(min=1), default=DEMO_ITERATIONS, show_default=True,
    help="Training iterations.",
)
@click.option(
    "--name", default=None,
    help=f"Run name [default: {DEMO_RUN_NAME}, or {DEMO_RUN_NAME}-ITERATIONS with another --iterations].",
)
@exiting_on_interrupt
@reporting_errors
def demo_command(
    store: str | None,
    device: str | None,
    threads: int | None,
    keep_last: int | None,
    async_checkpoint: bool,
    iterations: int,
    name: str | None,
) -> None:
    """Train a small 2D U-Net on synthetic data, checkpointing and validating into the store,
    then show its best checkpoints, loaded back from the store, and the command that opens the
    store's dashboard.

    Running it again continues the run (or just shows its results when it is complete).
    """
    if name is None:
        name = DEMO_RUN_NAME if iterations == DEMO_ITERATIONS else f"{DEMO_RUN_NAME}-{iterations}"
    config = demo_run_config(name, iterations)
    stores = ExperimentStores.open(store)
    run = _prepare(config, stores, store, device, threads)
    click.echo(
        f"A {config.architecture_config.dims}D U-Net ({_parameter_count(run):,} parameters) learns "
        f"to segment noisy synthetic disks: {plural(config.num_iterations, 'iteration')}, a checkpoint "
        f"stored and validated every {config.validation_interval}."
    )
    _say_how_the_run_stands(config, stores)
    untrained = evaluate(run, run.model, device)
    _train_and_report(run, stores, device, keep_last, async_checkpoint, untrained)
    click.echo(f"\nThe store in a browser (needs pip install 'dacapo-store[ui]'):\n  {dashboard_command_line(store)}")


@click.command("train")
@click.argument("config_file", metavar="CONFIG.yaml", type=click.Path(exists=True, dir_okay=False))
@store_option
@device_option
@threads_option
@keep_last_option
@async_checkpoint_option
@exiting_on_interrupt
@reporting_errors
def train_command(
    config_file: str,
    store: str | None,
    device: str | None,
    threads: int | None,
    keep_last: int | None,
    async_checkpoint: bool,
) -> None:
    """Train the run described by CONFIG.yaml (a RunConfig as YAML), resuming it if the store
    already holds part of it, then show its best checkpoints. Plug-ins given by import path
    (`type: my_package.nets:TinyCNNConfig`) are also looked for in CONFIG.yaml's directory and
    the working directory."""
    add_plugin_search_paths(os.path.dirname(os.path.abspath(config_file)), os.getcwd())
    config = RunConfig.from_yaml_file(config_file)
    stores = ExperimentStores.open(store)
    run = _prepare(config, stores, store, device, threads)
    _say_how_the_run_stands(config, stores)
    _train_and_report(run, stores, device, keep_last, async_checkpoint, None)


def _prepare(
    config: RunConfig, stores: ExperimentStores, store: str | None, device: str | None, threads: int | None
) -> Run:
    """Set torch's CPU threads, say where the run trains, store ``config`` (the same config
    again is fine) and rebuild the run from the stored config."""
    threads = set_cpu_threads(threads)
    resolved = resolve_device(device)
    where = f"cpu, {plural(threads, 'thread')}" if resolved.type == "cpu" else str(resolved)
    click.echo(f"Run {config.name!r} in store {resolve_store(store)}, on {where}.")
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
    run: Run,
    stores: ExperimentStores,
    device: str | None,
    keep_last: int | None,
    async_checkpoint: bool,
    untrained: Sequence[Evaluation] | None,
) -> None:
    """Train ``run`` (pruning to ``keep_last`` if given; checkpoints stored in the background
    with ``async_checkpoint``), then print its best checkpoints.

    Raises:
        CliError: a best checkpoint re-scored differently, or ``load_best`` loaded other weights.
    """
    retention = None if keep_last is None else RetentionPolicy(keep_last=keep_last, keep_every=None, keep_best=False)
    on_terminal = sys.stdout.isatty() and sys.stderr.isatty()
    train_run(
        run, stores.weights, stores.stats, device=device, progress=sys.stderr.isatty(), retention=retention,
        on_checkpoint=None if on_terminal else print_progress_line, async_checkpoint=async_checkpoint,
    )
    report = best_report(run, stores.weights, stores.stats, untrained, device)
    if not report.rows and not report.unscored:
        click.echo(f"Run {run.name!r} has no validation scores (no validation datasets).")
        return
    click.echo("\nBest checkpoint per validation dataset and criterion (from the stored scores):")
    click.echo(format_report(report))
    click.echo(
        "\n're-scored': the best checkpoint's weights, read back from the store into a fresh model "
        "and validated again."
    )
    if not report.ok:
        raise CliError("the store returned weights that do not reproduce their stored best score")


def _parameter_count(run: Run) -> int:
    return sum(parameter.numel() for parameter in run.model.parameters())


def register(group: click.Group) -> None:
    """Add ``demo`` and ``train`` to ``group``."""
    group.add_command(demo_command)
    group.add_command(train_command)
