"""Exceptions (and the one warning) raised by dacapo-store.

Every error derives from :class:`DacapoStoreError`, and also from the built-in exception a
caller would naturally catch (``ValueError``, ``FileNotFoundError``, ``LookupError``,
``PermissionError``, ``ConnectionError``), so code written against DaCapo's file store keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable


class DacapoStoreError(Exception):
    """Base class of every error raised by dacapo-store."""


class CheckpointExistsError(DacapoStoreError, ValueError):
    """A checkpoint for this (run, iteration) is already stored, or being stored by another writer."""


class CheckpointNotFoundError(DacapoStoreError, FileNotFoundError, ValueError):
    """No complete checkpoint is stored for this (run, iteration)."""


class CorruptCheckpointError(DacapoStoreError, IOError):
    """A stored checkpoint failed verification (digest, size, missing payload) or is unsafe to load."""


class CheckpointChangedError(DacapoStoreError, RuntimeError):
    """A checkpoint was replaced (overwritten) again and again while it was being read, so that
    no version of it could be read whole. It is not damaged: read it again (retryable)."""


class NoScoreError(DacapoStoreError, ValueError, LookupError):
    """No usable (non-NaN) validation score exists for the requested (run, dataset, criterion)."""

    @classmethod
    def for_query(
        cls,
        run: str,
        dataset: str,
        criterion: str,
        datasets: Iterable[str] | None = None,
        criteria: Iterable[str] | None = None,
    ) -> "NoScoreError":
        """The error for a best-score query that found nothing. Given the run's scored
        ``datasets`` (and the ``criteria`` scored on ``dataset``), an unknown name is said as
        such, with the names that exist, rather than "no non-NaN score"."""
        datasets = None if datasets is None else sorted(datasets)
        criteria = None if criteria is None else sorted(criteria)
        if datasets is not None and dataset not in datasets:
            if not datasets:
                return cls(f"run {run!r} has no validation scores (dataset {dataset!r}, criterion {criterion!r})")
            return cls(
                f"run {run!r} has no validation scores for dataset {dataset!r}; "
                f"its scored datasets: {', '.join(map(repr, datasets))}"
            )
        if criteria is not None and criterion not in criteria:
            return cls(
                f"run {run!r} has no validation scores for criterion {criterion!r} on dataset {dataset!r}; "
                f"its criteria there: {', '.join(map(repr, criteria))}"
            )
        return cls(
            f"run {run!r} has no non-NaN validation score for dataset {dataset!r}, "
            f"criterion {criterion!r}"
        )


class ReservationLostError(DacapoStoreError, RuntimeError):
    """A writer's reservation was taken over (judged stale) before it committed its checkpoint."""


class StoreConnectionError(DacapoStoreError, ConnectionError):
    """The store's database could not be reached (the message never shows a password)."""


class StoreNotFoundError(DacapoStoreError, FileNotFoundError):
    """A store opened for reading does not exist (only a write creates a store); the message
    names the path."""


class NotAuthorizedError(DacapoStoreError, PermissionError):
    """The store refused an operation: the user lacks the privilege (MongoDB's Unauthorized),
    or has no write permission on the store's directory. The message says what was refused."""


class ReadOnlyStoreError(NotAuthorizedError):
    """A write on a store opened read-only (``read_only=True``, or a local store whose
    directory is not writable)."""


class WriteConcernFailedError(DacapoStoreError, OSError):
    """The server applied a write but could not confirm it under the write concern (e.g. a
    ``wtimeoutMS`` ran out before a majority had it): the call fails, its effects are undone
    where the store can undo them.

    ``commit_may_survive`` is ``True`` when a checkpoint's commit missed its write concern and
    could not be undone either: the checkpoint is listed now and may or may not survive (a
    failover can roll it back); the message says so. The call fails all the same."""

    commit_may_survive: bool = False


class CheckpointNotStoredError(DacapoStoreError, RuntimeError):
    """Training stopped because a checkpoint (or the training stats before it) could not be
    stored after every retry; the message names the run, the iteration and the last error."""


class ConfigurationError(DacapoStoreError, ValueError):
    """A store setting is invalid; the message names the setting and where it came from."""


class ConfigurationWarning(UserWarning):
    """A store setting looks wrong but is not fatal (e.g. an unknown key in ``dacapo.yaml``)."""
