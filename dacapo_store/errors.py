"""Exceptions (and the one warning) raised by dacapo-store.

Every error derives from :class:`DacapoStoreError`, and also from the built-in exception a
caller would naturally catch (``ValueError``, ``FileNotFoundError``, ``LookupError``), so code
written against DaCapo's file store keeps working.
"""

from __future__ import annotations


class DacapoStoreError(Exception):
    """Base class of every error raised by dacapo-store."""


class CheckpointExistsError(DacapoStoreError, ValueError):
    """A checkpoint for this (run, iteration) is already stored, or being stored by another writer."""


class CheckpointNotFoundError(DacapoStoreError, FileNotFoundError, ValueError):
    """No complete checkpoint is stored for this (run, iteration)."""


class CorruptCheckpointError(DacapoStoreError, IOError):
    """A stored checkpoint failed verification (digest, size, missing payload) or is unsafe to load."""


class NoScoreError(DacapoStoreError, ValueError, LookupError):
    """No usable (non-NaN) validation score exists for the requested (run, dataset, criterion)."""

    @classmethod
    def for_query(cls, run: str, dataset: str, criterion: str) -> "NoScoreError":
        """The error for a best-score query that found nothing."""
        return cls(
            f"run {run!r} has no non-NaN validation score for dataset {dataset!r}, "
            f"criterion {criterion!r}"
        )


class ReservationLostError(DacapoStoreError, RuntimeError):
    """A writer's reservation was taken over (judged stale) before it committed its checkpoint."""


class StoreConnectionError(DacapoStoreError, ConnectionError):
    """The store's database could not be reached (the message never shows a password)."""


class ConfigurationError(DacapoStoreError, ValueError):
    """A store setting is invalid; the message names the setting and where it came from."""


class ConfigurationWarning(UserWarning):
    """A store setting looks wrong but is not fatal (e.g. an unknown key in ``dacapo.yaml``)."""
