"""What each dashboard page shows, read from the stores (no web framework here).

Every list is one store query: the runs page asks :meth:`WeightsStore.run_totals`,
:meth:`StatsStore.best_validation_scores` and :meth:`StatsStore.list_runs` once each, whatever
the number of runs. A run page reads that run's checkpoints, training stats, scores and config.
Values are plain JSON data (NaN and infinities as ``None``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checks import check_name
from ..config import resolve_store
from ..experiments.config_store import RunConfigNotFoundError, RunConfigStore
from ..maintenance.ranking import best_scores
from ..maintenance.retention import RetentionPolicy, protected_iterations
from ..records import TrainingIterationStats, ValidationScore
from ..stats_store import StatsStore
from ..store import open_store
from ..uri import redact_uri
from ..weights_store import WeightsStore
from .commands import best_command, export_command, load_snippet

MAX_LOSS_POINTS = 5000
"""The most raw training-loss points a run page plots (evenly spaced; the moving mean is
computed over every iteration first)."""


@dataclass(frozen=True)
class DashboardStores:
    """The stores a dashboard reads, opened read-only, and how its pages name the store
    (``label``: a directory or a URI with its password replaced by ``***``). ``configs`` is
    ``None`` where the store has no run config store."""

    weights: WeightsStore
    stats: StatsStore
    configs: RunConfigStore | None
    label: str


class UnknownRunError(LookupError):
    """The store holds nothing of the run asked for."""


def finite(value: float) -> float | None:
    """``value``, or ``None`` for NaN and infinities (JSON has neither)."""
    return value if math.isfinite(value) else None


def score_summary(score: ValidationScore) -> dict[str, Any]:
    """A best score as the pages show it."""
    return {
        "dataset": score.dataset,
        "criterion": score.criterion,
        "iteration": score.iteration,
        "value": finite(score.value),
        "higher_is_better": score.higher_is_better,
        "parameters": dict(score.parameters),
    }


def runs_overview(stores: DashboardStores, now: float, active_minutes: float) -> list[dict[str, Any]]:
    """Every run of the store, sorted by name: latest iteration, checkpoints, bytes, when its
    newest checkpoint was stored, whether it looks active (a checkpoint stored within
    ``active_minutes`` before ``now``; training statistics carry no time of storage, and
    training stores them with each checkpoint) and its best score per (dataset, criterion).
    Three store calls in all, whatever the number of runs."""
    totals = {total.run: total for total in stores.weights.run_totals()}
    best: dict[str, list[dict[str, Any]]] = {}
    for score in stores.stats.best_validation_scores():
        best.setdefault(score.run, []).append(score_summary(score))
    names = sorted(set(totals) | set(best) | set(stores.stats.list_runs()))
    rows = []
    for name in names:
        total = totals.get(name)
        last_stored = None if total is None else total.last_stored
        rows.append(
            {
                "name": name,
                "latest_iteration": None if total is None else total.latest_iteration,
                "checkpoints": 0 if total is None else total.checkpoints,
                "bytes": 0 if total is None else total.bytes,
                "last_stored": last_stored,
                "active": last_stored is not None and now - last_stored <= active_minutes * 60,
                "best": best.get(name, []),
            }
        )
    return rows


def moving_mean(values: Sequence[float], window: int) -> list[float | None]:
    """The mean of each value and the ``window - 1`` before it (fewer at the start); NaN
    values are left out of the means (a window of only NaN gives ``None``)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return []
    usable = np.isfinite(data)
    sums = np.cumsum(np.where(usable, data, 0.0))
    counts = np.cumsum(usable)
    shifted_sums = np.concatenate([np.zeros(window), sums[:-window]]) if window < data.size else np.zeros(data.size)
    shifted_counts = np.concatenate([np.zeros(window), counts[:-window]]) if window < data.size else np.zeros(data.size)
    window_counts = counts - shifted_counts
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums - shifted_sums) / window_counts
    return [float(mean) if count else None for mean, count in zip(means, window_counts)]


def loss_curve(stats: Sequence[TrainingIterationStats]) -> dict[str, Any]:
    """The training loss and its moving mean (a window of a fiftieth of the run, at least 10
    iterations, at most all), at most :data:`MAX_LOSS_POINTS` points each."""
    window = max(1, min(len(stats), max(10, len(stats) // 50)))
    mean = moving_mean([item.loss for item in stats], window)
    step = max(1, math.ceil(len(stats) / MAX_LOSS_POINTS))
    keep = range(0, len(stats), step)
    return {
        "iterations": [stats[i].iteration for i in keep],
        "loss": [finite(stats[i].loss) for i in keep],
        "mean": [mean[i] for i in keep],
        "window": window,
    }


def score_curves(scores: Sequence[ValidationScore]) -> list[dict[str, Any]]:
    """One curve per (dataset, criterion): the best score over parameter sets at each
    iteration, the criterion's direction, and the best iteration by the stores' rule."""
    per_iteration = best_scores(scores, lambda s: (s.dataset, s.criterion, s.iteration))
    overall = best_scores(scores, lambda s: (s.dataset, s.criterion))
    pairs = sorted({(s.dataset, s.criterion) for s in scores})
    curves = []
    for dataset, criterion in pairs:
        points = sorted(
            (iteration, score) for (d, c, iteration), score in per_iteration.items() if (d, c) == (dataset, criterion)
        )
        direction = next(s.higher_is_better for s in scores if (s.dataset, s.criterion) == (dataset, criterion))
        best = overall.get((dataset, criterion))
        curves.append(
            {
                "dataset": dataset,
                "criterion": criterion,
                "higher_is_better": direction,
                "iterations": [iteration for iteration, _ in points],
                "values": [finite(score.value) for _, score in points],
                "best": None if best is None else score_summary(best),
            }
        )
    return curves


def run_detail(stores: DashboardStores, run: str, policy: RetentionPolicy) -> dict[str, Any]:
    """Everything a run page shows: checkpoints (with which ones ``policy`` keeps, and why),
    the loss curve, score curves, best scores with their command lines, and the stored run
    config (``None`` if none).

    Raises:
        TypeError / ValueError: a bad run name.
        UnknownRunError: the store holds nothing of ``run``.
    """
    run = check_name(run, "run")
    checkpoints = stores.weights.list_checkpoints(run)
    stats = stores.stats.retrieve_training_stats(run)
    scores = stores.stats.retrieve_validation_scores(run)
    config = _run_config(stores.configs, run)
    if not checkpoints and not stats and not scores and config is None:
        raise UnknownRunError(f"unknown run {run!r}")
    kept = policy.reasons_to_keep(
        [info.iteration for info in checkpoints], protected_iterations(stores.stats, run, policy.keep_best)
    )
    curves = score_curves(scores)
    stored = {info.iteration for info in checkpoints}
    return {
        "name": run,
        "checkpoints": [
            {
                "iteration": info.iteration,
                "bytes": info.size,
                "stored_at": info.created,
                "parts": {name: {"bytes": part.size, "digest": part.digest} for name, part in info.parts.items()},
                "kept_because": kept.get(info.iteration, []),
            }
            for info in checkpoints
        ],
        "loss": loss_curve(stats),
        "scores": curves,
        "best": [_best_with_commands(curve["best"], run, stored, stores.label) for curve in curves if curve["best"]],
        "config": config,
    }


def _best_with_commands(best: dict[str, Any], run: str, stored: set[int], label: str) -> dict[str, Any]:
    iteration = best["iteration"]
    commands = {"best": best_command(run, best["dataset"], best["criterion"], label)}
    if iteration in stored:
        commands["export"] = export_command(run, iteration, label)
        commands["load"] = load_snippet(run, iteration, label)
    return {**best, "stored": iteration in stored, "commands": commands}


def _run_config(configs: RunConfigStore | None, run: str) -> dict[str, Any] | None:
    if configs is None:
        return None
    try:
        return configs.retrieve_run_config(run)
    except RunConfigNotFoundError:
        return None


def compare_curves(stores: DashboardStores, runs: Sequence[str], dataset: str, criterion: str) -> list[dict[str, Any]]:
    """The curves of ``runs`` on one (dataset, criterion): per run, the best score over
    parameter sets at each iteration and the best iteration (runs without such scores have
    empty curves). One query per run asked for.

    Raises:
        TypeError / ValueError: a bad run, dataset or criterion name.
    """
    dataset, criterion = check_name(dataset, "dataset"), check_name(criterion, "criterion")
    curves = []
    for run in runs:
        scores = stores.stats.retrieve_validation_scores(check_name(run, "run"), dataset, criterion)
        found = score_curves(scores)
        curve = found[0] if found else {"iterations": [], "values": [], "best": None, "higher_is_better": None}
        curves.append({"run": run, **{key: curve[key] for key in ("iterations", "values", "best", "higher_is_better")}})
    return curves


def score_pairs(stores: DashboardStores) -> list[tuple[str, str]]:
    """Every (dataset, criterion) some run has a usable score on, sorted (one query)."""
    return sorted({(score.dataset, score.criterion) for score in stores.stats.best_validation_scores()})


def open_dashboard_stores(store: str | None) -> DashboardStores:
    """Open the store that ``store`` (or the environment) designates, read-only (a MongoDB
    ``read`` role suffices; read-only media work), over one connection, labelled by its
    directory or its URI with its password replaced by ``***``.

    Raises:
        ConfigurationError, StoreConnectionError, StoreNotFoundError (no store there).
    """
    location = resolve_store(store)
    label = redact_uri(location.target) if location.kind == "mongo" else location.target
    opened = open_store(location, read_only=True)
    return DashboardStores(weights=opened.weights, stats=opened.stats, configs=opened.run_configs, label=label)
