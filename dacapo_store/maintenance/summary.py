"""What a store holds: the runs, their checkpoints, bytes and best iterations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..checks import run_name_of
from ..stats_store import StatsStore
from ..weights_store import WeightsStore
from .ranking import best_per_pair


@dataclass(frozen=True)
class BestCheckpoint:
    """The best score of a run on one (dataset, criterion); ``stored`` says whether its
    checkpoint is in the weights store."""

    dataset: str
    criterion: str
    iteration: int
    value: float
    higher_is_better: bool
    parameters: dict[str, Any]
    stored: bool


@dataclass(frozen=True)
class RunSummary:
    """One run: its number of complete checkpoints, latest iteration (``None`` if none), total
    payload bytes, and best checkpoint per (dataset, criterion)."""

    run: str
    checkpoints: int
    latest_iteration: int | None
    bytes: int
    best: list[BestCheckpoint] = field(default_factory=list)


def known_runs(weights_store: WeightsStore, stats_store: StatsStore) -> list[str]:
    """Runs with a checkpoint, training statistics or a validation score, sorted."""
    return sorted(set(weights_store.list_runs()) | set(stats_store.list_runs()))


def best_checkpoints(stats_store: StatsStore, run: str, stored: set[int]) -> list[BestCheckpoint]:
    """The best score of ``run`` on each (dataset, criterion) it was validated on (skipping
    pairs whose scores are all NaN); ``stored`` holds the iterations with a checkpoint."""
    scores = stats_store.retrieve_validation_scores(run)
    return [
        BestCheckpoint(
            dataset,
            criterion,
            score.iteration,
            score.value,
            score.higher_is_better,
            dict(score.parameters),
            score.iteration in stored,
        )
        for (dataset, criterion), score in best_per_pair(stats_store, run, scores).items()
    ]


def summarize_run(weights_store: WeightsStore, stats_store: StatsStore, run: object) -> RunSummary:
    """Summarize one run (see :class:`RunSummary`).

    Raises:
        TypeError / ValueError: a bad run name.
    """
    name = run_name_of(run)
    checkpoints = weights_store.list_checkpoints(name)
    iterations = {info.iteration for info in checkpoints}
    return RunSummary(
        run=name,
        checkpoints=len(checkpoints),
        latest_iteration=max(iterations, default=None),
        bytes=sum(info.size for info in checkpoints),
        best=best_checkpoints(stats_store, name, iterations),
    )
