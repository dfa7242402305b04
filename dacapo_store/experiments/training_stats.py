"""``TrainingStats``: the per-iteration training statistics of a run, in memory."""

from __future__ import annotations

from collections.abc import Iterable

from ..records import TrainingIterationStats


class TrainingStats:
    """Statistics of training iterations ``0, 1, ...`` in increasing order.

    Iterations count from 0; after training iterations ``0..k-1`` the run has *trained until*
    ``k``, the number of its checkpoint.
    """

    def __init__(self, iteration_stats: Iterable[TrainingIterationStats] = ()) -> None:
        self.iteration_stats: list[TrainingIterationStats] = []
        for stats in sorted(iteration_stats, key=lambda s: s.iteration):
            self.add_iteration_stats(stats)

    def __repr__(self) -> str:
        return f"TrainingStats(trained_until={self.trained_until()})"

    def add_iteration_stats(self, iteration_stats: TrainingIterationStats) -> None:
        """Append the stats of the next iteration.

        A gap is allowed (a run resumed from weights stored ahead of its stats), going back is not.

        Raises:
            ValueError: ``iteration_stats.iteration`` is below :meth:`trained_until`.
        """
        if iteration_stats.iteration < self.trained_until():
            raise ValueError(
                f"training stats of iteration {iteration_stats.iteration} added after iteration "
                f"{self.trained_until() - 1}"
            )
        self.iteration_stats.append(iteration_stats)

    def trained_until(self) -> int:
        """The number of completed iterations: the last iteration + 1, or 0 if none."""
        return self.iteration_stats[-1].iteration + 1 if self.iteration_stats else 0

    def delete_after(self, iteration: int) -> None:
        """Keep only the stats checkpoint ``iteration`` covers (iterations < ``iteration``)."""
        self.iteration_stats = [s for s in self.iteration_stats if s.iteration < iteration]
