"""Re-checking stored checkpoints against their recorded sizes and digests."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import CheckpointChangedError, CheckpointNotFoundError, CorruptCheckpointError
from ..records import CheckpointInfo
from ..weights_store import WeightsStore


@dataclass(frozen=True)
class VerifyFailure:
    """A checkpoint that failed verification, and why."""

    run: str
    iteration: int
    reason: str


def verify_checkpoints(
    weights_store: WeightsStore,
    checkpoints: Iterable[CheckpointInfo],
    progress: Callable[[CheckpointInfo], None] | None = None,
) -> list[VerifyFailure]:
    """Verify every checkpoint in ``checkpoints`` (each part's size and digest).

    ``progress`` is called after each checkpoint. A checkpoint removed since it was listed is
    skipped, and so is one replaced at every attempt to check it (a writer overwrites it as fast
    as it is checked: that is no damage).

    Returns:
        The failures, in the order checked (empty: all intact).
    """
    failures = []
    for info in checkpoints:
        try:
            weights_store.verify(info.run, info.iteration)
        except CorruptCheckpointError as error:
            failures.append(VerifyFailure(info.run, info.iteration, str(error)))
        except (CheckpointNotFoundError, CheckpointChangedError):
            pass
        if progress is not None:
            progress(info)
    return failures
