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

import functools
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ..config import resolve_store
from ..errors import CheckpointExistsError, CheckpointNotFoundError, DacapoStoreError
from ..local.weights import fsync_directory
from ..maintenance.retention import prune
from ..maintenance.summary import RunSummary, known_runs, summarize_run
from ..maintenance.verification import verify_checkpoints
from ..records import Weights
from ..safe_files import open_regular_file
from ..serialization import check_uncompressed_archive, fd_path, load_state
from ..stats_store import StatsStore
from ..store import Store, driver_errors, open_store
from ..uri import redact_text
from ..weights_store import WeightsStore


# ---- opening stores, errors, output -------------------------------------------------------


class Stores:
    """The weights and stats views of the store location designated by one ``--store`` value,
    on one connection, opened on first use (read-only if ``read_only``)."""

    def __init__(self, store: str | None, read_only: bool = False) -> None:
        self.store = store
        self.read_only = read_only
        self._opened: Store | None = None

    def _location(self) -> Store:
        if self._opened is None:
            self._opened = open_store(self.store, read_only=self.read_only)
        return self._opened

    @property
    def weights(self) -> WeightsStore:
        """The weights store (opened on first access; raises as :func:`create_weights_store`)."""
        return self._location().weights

    @property
    def stats(self) -> StatsStore:
        """The stats store (opened on first access; raises as :func:`create_stats_store`)."""
        return self._location().stats

    def require_run(self, run: str) -> str:
        """Return ``run`` if the store knows it.

        Raises:
            UnknownRunError: no checkpoint, statistic or score of ``run`` is stored.
        """
        if run not in known_runs(self.weights, self.stats):
            raise UnknownRunError(f"unknown run {run!r} (`dacapo-store runs` lists the stored runs)")
        return run


def open_stores(store: str | None, read_only: bool = False) -> Stores:
    """The stores that every subcommand uses, read-only for the read commands (tests may
    replace this function)."""
    return Stores(store, read_only)


class UnknownRunError(DacapoStoreError, LookupError):
    """The store holds nothing of the named run."""


class CliError(click.ClickException):
    """A failure shown as one line ``error: ...`` with exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _one_line(error: BaseException, store: str | None) -> str:
    """The error's message on one line, without pymongo's topology dump or any password (of
    the store's URI in every form, and of any MongoDB URI in the message), as the store's
    backend explains it (an SQLite error names the local catalog it came from)."""
    message = str(error).split(", Topology Description:")[0]
    try:
        location = resolve_store(store)
    except DacapoStoreError:
        location = None
    uri = location.target if location is not None and location.kind == "mongo" else None
    message = " ".join(redact_text(message, uri).split()) or type(error).__name__
    return message if location is None else open_store(location).explain_error(error, message)


def reporting_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn store, value, connection, file-system and catalog errors into :class:`CliError`
    (exit status 1). A closed standard output (``BrokenPipeError``) is left to the command
    group, which exits quietly (see :mod:`dacapo_store.cli`)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            raise
        except (DacapoStoreError, ValueError, TypeError, OSError, *driver_errors()) as error:
            raise CliError(_one_line(error, kwargs.get("store"))) from error

    return wrapper


def say_which_store(store: str | None) -> None:
    """Name the store a listing reads, on stderr (standard output stays the listing alone).

    Raises:
        ConfigurationError: as :func:`~dacapo_store.config.resolve_store`.
    """
    click.echo(f"store: {resolve_store(store)}", err=True)


def store_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--store PATH|URI`` (passed to the command as ``store``, default ``None``)."""
    return click.option(
        "--store",
        metavar="PATH|URI",
        default=None,
        help="Store directory or mongodb:// URI (default: $DACAPO_STORE_URI, dacapo.yaml, local).",
    )(command)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the ``--json`` flag (passed to the command as ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(command)


def to_jsonable(value: Any) -> Any:
    """Plain JSON data: dataclasses as dicts, NaN and infinities as ``null``."""
    if is_dataclass(value):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON (via :func:`to_jsonable`: NaN and infinities as ``null``)."""
    click.echo(json.dumps(to_jsonable(value), indent=2, allow_nan=False))


def human_bytes(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: numbers right-aligned, text left-aligned ("" cells are blank)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    numeric = [  # a column of numbers (blank cells of continuation lines aside)
        any(isinstance(row[i], (int, float)) for row in rows)
        and all(isinstance(row[i], (int, float)) or row[i] == "" for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric)
        ).rstrip()

    return "\n".join([line(headers)] + [line(row) for row in cells])


def format_time(timestamp: float) -> str:
    """POSIX time as local ``YYYY-MM-DD HH:MM:SS``."""
    return datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


def format_score(value: float) -> str:
    """A score with 6 significant digits (``nan`` for NaN)."""
    return f"{value:.6g}"


def progress(total: int | None, desc: str, unit: str = "B") -> Any:
    """A tqdm bar on stderr, shown only on a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024,
        disable=None, leave=False, file=sys.stderr,
    )


DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smhdw]?)\s*$")
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Duration(click.ParamType):
    """A duration such as ``90``, ``90s``, ``30m``, ``2h``, ``7d`` or ``1w``, in seconds."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        """Return ``value`` in seconds (numbers pass through); a malformed value is a usage error."""
        if isinstance(value, (int, float)):
            return float(value)
        match = DURATION.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not a duration (e.g. 3600, 90s, 30m, 2h, 7d)", param, ctx)
        return float(match[1]) * DURATION_UNITS[match[2]]


# ---- listings ---------------------------------------------------------------------------------


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


# ---- transfers --------------------------------------------------------------------------------


class _ProgressWriter:
    """A write-only file that advances a progress bar (``torch.save`` needs write and flush)."""

    def __init__(self, file: Any, bar: Any) -> None:
        self._file, self._bar = file, bar

    def write(self, data: Any) -> int:
        written = self._file.write(data)
        self._bar.update(written)
        return written

    def flush(self) -> None:
        self._file.flush()


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
    import torch

    if output.exists() and not force:
        raise FileExistsError(f"{output} exists (use --force to overwrite it)")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"cannot export to {output}: the directory {output.parent} does not exist")
    weights_store = open_stores(store, read_only=True).weights
    parts = ["model"] if no_optimizer else ["model", "optimizer"]
    stored = weights_store.checkpoint_info(run, iteration).parts
    expected = sum(stored[part].size for part in parts if part in stored)  # the bar's estimate
    weights = weights_store.retrieve_weights(run, iteration, optimizer=not no_optimizer)
    state = {"model": weights.model, "optimizer": weights.optimizer}
    handle, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file, progress(expected, f"exporting {output.name}") as bar:
            torch.save(state, _ProgressWriter(file, bar))
            file.flush()
            os.fsync(file.fileno())
            os.fchmod(file.fileno(), 0o666 & ~_umask())
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(output.parent)
    click.echo(
        f"exported checkpoint {iteration} of run {run!r} to {output} ({human_bytes(output.stat().st_size)})"
    )


def _umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


CHECKPOINT_FILE_KEYS = frozenset({"model", "optimizer"})


def load_checkpoint_file(path: Path) -> Any:
    """Load a checkpoint file a user names, weights only, memory-mapped (tensors are not
    copied into memory).

    Only a regular file is opened (not ``/dev/zero``, a FIFO or a directory), and only an
    archive as ``torch.save`` writes it (uncompressed records that fit in the file) is loaded.

    Raises:
        ValueError: not a regular file.
        CorruptCheckpointError: not a torch archive, compressed records, or not a plain state dict.
        OSError: the file cannot be read.
    """
    describe = f"file {path}"
    with open_regular_file(path) as file:
        check_uncompressed_archive(file, describe)
        return load_state(fd_path(file.fileno(), path), "cpu", describe, mmap=True)


def weights_from_file_state(state: Any, path: Path) -> Weights:
    """Interpret a loaded file: ``{"model": ..., "optimizer": ...}`` (optimizer optional or
    ``None``) or a bare model state dict (a dict without a dict under ``"model"``).

    Raises:
        TypeError: the file holds no state dict.
        ValueError: a checkpoint dict (a dict under ``"model"``) with keys other than
            ``model`` and ``optimizer`` (e.g. ``epoch``): storing only part of it would
            silently lose the rest.
    """
    if not isinstance(state, dict):
        raise TypeError(f"{path} holds a {type(state).__name__}, not a state dict")
    if not isinstance(state.get("model"), dict):
        return Weights(state, None)
    unknown = sorted(str(key) for key in set(state) - CHECKPOINT_FILE_KEYS)
    if unknown:
        raise ValueError(
            f"{path} holds a checkpoint with keys {unknown} besides 'model' and 'optimizer'; "
            "only model and optimizer state can be imported (save a file with just those)"
        )
    return Weights(state["model"], state.get("optimizer"))


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


# ---- maintenance --------------------------------------------------------------------------------


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


COMMANDS = (
    runs_command, checkpoints_command, scores_command, best_command, export_command,
    import_command, prune_command, gc_command, verify_command, du_command, plot_command,
    doctor_command,
)


def register(group: click.Group) -> None:
    """Add this module's subcommands to ``group``."""
    for command in COMMANDS:
        group.add_command(command)
