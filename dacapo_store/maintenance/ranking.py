"""Picking best scores by the stores' rule: NaN never wins, the criterion's own direction
decides, ties go to the earliest iteration.

The stores answer "best of (run, dataset, criterion)" with one indexed query
(:func:`best_per_pair` asks it for every pair a run has); :func:`best_scores` applies the same
rule to scores in memory, for groupings the stores do not index (per post-processing parameter
set, per iteration).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

from ..checks import parameters_key
from ..errors import NoScoreError
from ..records import ValidationScore, score_rank
from ..stats_store import StatsStore

Key = TypeVar("Key", bound=Hashable)


def best_scores(
    scores: Iterable[ValidationScore], key: Callable[[ValidationScore], Key]
) -> dict[Key, ValidationScore]:
    """Return the best score of each group ``key(score)`` (groups with only NaN are absent)."""
    best: dict[Key, tuple[tuple, ValidationScore]] = {}
    for score in scores:
        rank = score_rank(score.value, score.higher_is_better)
        if rank is None:
            continue
        order = (-rank, score.iteration, parameters_key(score.parameters))
        group = key(score)
        if group not in best or order < best[group][0]:
            best[group] = (order, score)
    return {group: score for group, (_, score) in best.items()}


def best_per_pair(
    stats_store: StatsStore, run: str, scores: Iterable[ValidationScore]
) -> dict[tuple[str, str], ValidationScore]:
    """The store's best score of ``run`` for each (dataset, criterion) among ``scores`` (the
    run's retrieved scores), one query per pair, in sorted pair order; pairs with only NaN
    scores are absent."""
    best = {}
    for dataset, criterion in sorted({(score.dataset, score.criterion) for score in scores}):
        try:
            best[dataset, criterion] = stats_store.best_validation_score(run, dataset, criterion)
        except NoScoreError:  # only NaN scores: no best
            continue
    return best
