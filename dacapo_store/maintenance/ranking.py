"""Picking best scores among already retrieved ones, by the stores' rule.

The stores answer "best of (run, dataset, criterion)" with one indexed query; this module
applies the same rule to scores in memory, for groupings the stores do not index (per
post-processing parameter set, per iteration): NaN never wins, the criterion's own direction
decides, ties go to the earliest iteration.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

from ..checks import parameters_key
from ..records import ValidationScore, score_rank

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
