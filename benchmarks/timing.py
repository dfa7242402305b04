"""Timing contenders against each other: interleaved rounds, medians, minimums and spreads."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Contender:
    """One way of doing the measured work: ``action`` is timed, ``setup`` (untimed) runs before
    each timed run (a fresh model, a page cache to drop)."""

    action: Callable[[], object]
    setup: Callable[[], object] | None = None


@dataclass
class Samples:
    """The seconds each contender took, round by round (index ``i`` of every list is round ``i``)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def minimum(self, name: str) -> float:
        return min(self.seconds[name])

    def ratios(self, baseline: str, ours: str) -> list[float]:
        """Per round: the baseline's time over ours (above 1: ours was faster in that round)."""
        return [theirs / mine for theirs, mine in zip(self.seconds[baseline], self.seconds[ours])]


def interleaved(contenders: dict[str, Contender], rounds: int) -> Samples:
    """Run every contender once per round, for ``rounds`` rounds, and time each run.

    The contenders take turns (each round in a rotated order), so that a slow spell of the disk
    or of a neighbour hits all of them alike rather than whichever ran second; garbage is
    collected, untimed, before each run.
    """
    samples = Samples({name: [] for name in contenders})
    names = list(contenders)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            contender = contenders[name]
            if contender.setup is not None:
                contender.setup()
            gc.collect()
            start = time.perf_counter()
            contender.action()
            samples.seconds[name].append(time.perf_counter() - start)
    return samples


def best_time(action: Callable[[], object], repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``action``, in seconds (for sub-millisecond look-ups)."""
    return min(interleaved({"action": Contender(action)}, repeat).seconds["action"])
