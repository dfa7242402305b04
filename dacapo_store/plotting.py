"""Plotting a run: validation score curves and the training loss, best iterations marked.

The figure has one panel per (dataset, criterion), each showing the best score over the
post-processing parameter sets at every validated iteration with the run's best checkpoint
marked, and a last panel with the training loss. Its size in pixels is
:func:`figure_size_px` of the number of panels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .checks import run_name_of
from .errors import NoScoreError
from .maintenance.ranking import best_scores
from .stats_store import StatsStore

WIDTH_INCHES = 10.0
PANEL_HEIGHT_INCHES = 3.0
DPI = 100
SMOOTHING_POINTS = 50
"""A loss curve longer than this also gets a moving mean over ``len // SMOOTHING_POINTS`` points."""


def figure_size_px(panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure with ``panels`` panels."""
    return round(WIDTH_INCHES * DPI), round(PANEL_HEIGHT_INCHES * panels * DPI)


def plot_run(stats_store: StatsStore, run: object, path: str | os.PathLike) -> tuple[int, int]:
    """Write the PNG chart of ``run`` to ``path``; return its (width, height) in pixels.

    Raises:
        NoScoreError: the run has neither validation scores nor training statistics.
        TypeError / ValueError: a bad run name.
    """
    figure = run_figure(stats_store, run)
    figure.savefig(path, format="png", dpi=DPI)
    width, height = figure.get_size_inches() * DPI
    return round(width), round(height)


def run_figure(stats_store: StatsStore, run: object) -> Any:
    """The chart of ``run`` as a matplotlib ``Figure`` (see :func:`plot_run`; same errors)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state is touched

    name = run_name_of(run)
    scores = stats_store.retrieve_validation_scores(name)
    losses = stats_store.retrieve_training_stats(name)
    if not scores and not losses:
        raise NoScoreError(f"run {name!r} has no validation scores and no training statistics to plot")
    pairs = sorted({(s.dataset, s.criterion) for s in scores})
    size = figure_size_px(len(pairs) + 1)
    # constrained layout leaves room for the title above the panels (tight_layout does not)
    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    axes = figure.subplots(len(pairs) + 1, 1, squeeze=False, sharex=True)[:, 0]
    for axis, (dataset, criterion) in zip(axes[:-1], pairs):
        selected = [s for s in scores if (s.dataset, s.criterion) == (dataset, criterion)]
        _plot_scores(axis, stats_store, name, dataset, criterion, selected)
    _plot_loss(axes[-1], [s.iteration for s in losses], [s.loss for s in losses])
    figure.suptitle(f"run {name}")
    return figure


def _plot_scores(axis, stats_store: StatsStore, run: str, dataset: str, criterion: str, scores) -> None:
    per_iteration = best_scores(scores, lambda s: s.iteration)
    iterations = sorted({s.iteration for s in scores})
    values = [per_iteration[i].value if i in per_iteration else math.nan for i in iterations]
    direction = "higher" if scores[0].higher_is_better else "lower"
    axis.plot(iterations, values, marker="o", markersize=3, label=f"{criterion} (best over parameters)")
    try:
        best = stats_store.best_validation_score(run, dataset, criterion)
    except NoScoreError:
        best = None
        axis.text(0.5, 0.5, "only NaN scores", ha="center", va="center", transform=axis.transAxes)
    if best is not None:
        axis.axvline(best.iteration, color="tab:red", linestyle="--", linewidth=1)
        axis.plot([best.iteration], [best.value], marker="*", markersize=14, color="tab:red",
                  label=f"best: iteration {best.iteration} = {best.value:.4g}")
    axis.set_title(f"{dataset} / {criterion} ({direction} is better)")
    axis.set_xlabel("iteration")
    axis.tick_params(labelbottom=True)
    axis.set_ylabel(criterion)
    axis.grid(True, alpha=0.3)
    axis.legend(loc="best", fontsize="small")


def _plot_loss(axis, iterations: Sequence[int], losses: Sequence[float]) -> None:
    if iterations:
        axis.plot(iterations, losses, linewidth=0.8, color="tab:gray", alpha=0.6, label="training loss")
        window = max(1, len(losses) // SMOOTHING_POINTS)
        if window > 1:
            smoothed = np.convolve(np.asarray(losses, dtype=float), np.ones(window) / window, mode="valid")
            axis.plot(iterations[window - 1:], smoothed, color="tab:blue", label=f"moving mean of {window} points")
        axis.legend(loc="best", fontsize="small")
    else:
        axis.text(0.5, 0.5, "no training statistics", ha="center", va="center", transform=axis.transAxes)
    axis.set_title("training loss")
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss")
    axis.grid(True, alpha=0.3)
