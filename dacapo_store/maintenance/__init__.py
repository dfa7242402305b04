"""Operations on a store as a whole: retention (prune), run summaries and disk usage,
verification. Garbage collection is :meth:`dacapo_store.WeightsStore.collect_garbage`."""

from .retention import PruneReport, RetentionPolicy, apply_retention, prune
from .summary import BestCheckpoint, RunSummary, known_runs, summarize_run
from .verification import VerifyFailure, verify_checkpoints

__all__ = [
    "BestCheckpoint",
    "PruneReport",
    "RetentionPolicy",
    "RunSummary",
    "VerifyFailure",
    "apply_retention",
    "known_runs",
    "prune",
    "summarize_run",
    "verify_checkpoints",
]
