"""Retention: which checkpoints of a run to keep, and removing the others.

Two checkpoints are always kept whatever the policy: the latest, and the best of every
(dataset, criterion) the run has validation scores for (as :meth:`StatsStore.best_validation_score`
answers). A :class:`RetentionPolicy` keeps more: the last ``keep_last``, every iteration that is
a multiple of ``keep_every``, and with ``keep_best`` (off by default, as the CLI's
``--keep-best``) the best checkpoint of each post-processing parameter set of every
(dataset, criterion).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..checks import parameters_key, run_name_of
from ..errors import CheckpointNotFoundError
from ..records import CheckpointInfo
from ..stats_store import StatsStore
from ..weights_store import WeightsStore
from .ranking import best_per_pair, best_scores

logger = logging.getLogger(__name__)

LATEST = "latest"


def _check_count(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int or None, got {type(value).__name__}: {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


@dataclass(frozen=True)
class RetentionPolicy:
    """Which checkpoints to keep besides the latest and the best per (dataset, criterion).

    Attributes:
        keep_last: keep the ``keep_last`` highest iterations (``None``: no such rule).
        keep_every: keep iterations that are multiples of ``keep_every`` (``None``: no such rule).
        keep_best: also keep the best checkpoint of every post-processing parameter set
            (default ``False``; the best per (dataset, criterion) is kept regardless).

    Raises:
        TypeError / ValueError: a count that is not an int >= 1 or ``None``, or a non-bool
            ``keep_best``.
    """

    keep_last: int | None = None
    keep_every: int | None = None
    keep_best: bool = False

    def __post_init__(self) -> None:
        _check_count(self.keep_last, "keep_last")
        _check_count(self.keep_every, "keep_every")
        if not isinstance(self.keep_best, bool):
            raise TypeError(f"keep_best must be a bool, got {type(self.keep_best).__name__}")

    def reasons_to_keep(
        self, iterations: Iterable[int], protected: Mapping[int, list[str]]
    ) -> dict[int, list[str]]:
        """Return, for each of ``iterations`` that is kept, why (pure; no store access).

        ``protected`` maps iterations that must be kept (best checkpoints) to their reasons;
        the highest of ``iterations`` is always kept as ``"latest"``.
        """
        ordered = sorted(set(iterations))
        reasons: dict[int, list[str]] = {}
        for position, iteration in enumerate(reversed(ordered)):
            why = list(protected.get(iteration, []))
            if position == 0:
                why.append(LATEST)
            if self.keep_last is not None and position < self.keep_last:
                why.append(f"last {self.keep_last}")
            if self.keep_every is not None and iteration % self.keep_every == 0:
                why.append(f"every {self.keep_every}")
            if why:
                reasons[iteration] = why
        return reasons


@dataclass(frozen=True)
class PruneReport:
    """The outcome of a prune: ``removed`` checkpoints (with ``dry_run``: those that would be),
    ``kept`` maps each kept iteration to why it is kept."""

    run: str
    removed: tuple[CheckpointInfo, ...]
    kept: Mapping[int, list[str]]
    dry_run: bool

    @property
    def bytes_freed(self) -> int:
        """Bytes of the removed checkpoints (or that a real run would free)."""
        return sum(info.size for info in self.removed)


def protected_iterations(stats_store: StatsStore, run: str, per_parameters: bool) -> dict[int, list[str]]:
    """Iterations holding a best score of ``run``: the best per (dataset, criterion) (one
    store query each) and, with ``per_parameters``, the best per parameter set too."""
    scores = stats_store.retrieve_validation_scores(run)
    reasons: dict[int, list[str]] = {}
    overall = {}
    for (dataset, criterion), best in best_per_pair(stats_store, run, scores).items():
        overall[dataset, criterion] = best.iteration
        reasons.setdefault(best.iteration, []).append(f"best {dataset}/{criterion}")
    if per_parameters:
        groups = best_scores(scores, lambda s: (s.dataset, s.criterion, parameters_key(s.parameters)))
        for (dataset, criterion, parameters), best in sorted(groups.items()):
            if best.iteration != overall.get((dataset, criterion)):
                reasons.setdefault(best.iteration, []).append(
                    f"best {dataset}/{criterion} with {parameters}"
                )
    return reasons


def apply_retention(
    weights_store: WeightsStore,
    stats_store: StatsStore,
    run: object,
    policy: RetentionPolicy,
    dry_run: bool = False,
) -> PruneReport:
    """Remove the checkpoints of ``run`` that ``policy`` does not keep.

    The latest checkpoint and the best of every (dataset, criterion) are never removed. A
    checkpoint removed concurrently by someone else is skipped.

    Returns:
        A :class:`PruneReport`.

    Raises:
        TypeError / ValueError: a bad run name.
    """
    name = run_name_of(run)
    checkpoints = weights_store.list_checkpoints(name)
    protected = protected_iterations(stats_store, name, policy.keep_best)
    kept = policy.reasons_to_keep([info.iteration for info in checkpoints], protected)
    doomed = [info for info in checkpoints if info.iteration not in kept]
    removed = []
    for info in doomed:
        if not dry_run:
            try:
                weights_store.remove(name, info.iteration)
            except CheckpointNotFoundError:
                continue
            logger.info("pruned checkpoint %d of run %r", info.iteration, name)
        removed.append(info)
    return PruneReport(name, tuple(removed), kept, dry_run)


def prune(
    weights_store: WeightsStore,
    stats_store: StatsStore,
    run: object,
    keep_last: int | None = None,
    keep_every: int | None = None,
    keep_best: bool = False,
    dry_run: bool = False,
) -> PruneReport:
    """Remove the checkpoints of ``run`` that ``RetentionPolicy(keep_last, keep_every,
    keep_best)`` does not keep (see :func:`apply_retention`)."""
    policy = RetentionPolicy(keep_last=keep_last, keep_every=keep_every, keep_best=keep_best)
    return apply_retention(weights_store, stats_store, run, policy, dry_run)
