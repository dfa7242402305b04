"""Retrying transient MongoDB errors with bounded exponential backoff.

A replica set elects a new primary in about 12 s (median, default settings); until then writes
fail with NotWritablePrimary, PrimarySteppedDown, network errors or server selection timeouts.
pymongo's retryable writes retry once; :class:`RetryPolicy` keeps retrying a step for up to
``budget`` seconds (default 60 s, five elections' worth), waiting ``first_delay``, then twice as
long each time up to ``max_delay``, with jitter so that many trainers do not retry in lock step.

Only steps that are idempotent under retry may be retried: the stores make each step so (see
:mod:`dacapo_store.mongo.weights`). Which errors count as transient is decided by
:func:`is_transient` alone.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError

from ..errors import ConfigurationError

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_BUDGET_ENV = "DACAPO_STORE_RETRY_SECONDS"
DEFAULT_RETRY_BUDGET = 60.0
"""Seconds a step keeps retrying transient errors (``$DACAPO_STORE_RETRY_SECONDS`` overrides)."""

TRANSIENT_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        189,  # PrimarySteppedDown
        262,  # ExceededTimeLimit
        9001,  # SocketException
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
        134,  # ReadConcernMajorityNotAvailableYet
    }
)
"""Server error codes that mean "try again" (the retryable-writes spec's list): a failover, a
shutdown, a network problem between members, or ExceededTimeLimit (an operation the server
interrupted; safe here because every retried step is idempotent)."""

RETRYABLE_LABEL = "RetryableWriteError"


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is worth retrying: a lost or refused connection, no primary (server
    selection timed out), a server error with a code in :data:`TRANSIENT_CODES` (also inside a
    ``writeConcernError``), or one the server labelled ``RetryableWriteError``.

    Not transient: everything else, among it Unauthorized, duplicate keys, a write concern
    that timed out (code 64) and bad commands.
    """
    if not isinstance(error, PyMongoError):
        return False
    if isinstance(error, ConnectionFailure) or error.has_error_label(RETRYABLE_LABEL):
        return True
    if isinstance(error, BulkWriteError):
        details = error.details or {}
        problems = list(details.get("writeErrors", [])) + list(details.get("writeConcernErrors", []))
        return bool(problems) and all(problem.get("code") in TRANSIENT_CODES for problem in problems)
    return isinstance(error, OperationFailure) and error.code in TRANSIENT_CODES


def budget_from_environment(default: float = DEFAULT_RETRY_BUDGET) -> float:
    """The retry budget from ``$DACAPO_STORE_RETRY_SECONDS`` (``default`` when unset).

    Raises:
        ConfigurationError: the variable is not a non-negative number (a ValueError).
    """
    value = os.environ.get(RETRY_BUDGET_ENV)
    if value is None or not value.strip():
        return default
    try:
        budget = float(value)
    except ValueError:
        budget = -1.0
    if not budget >= 0 or budget == float("inf"):
        raise ConfigurationError(f"${RETRY_BUDGET_ENV} must be a number of seconds >= 0, got {value!r}")
    return budget


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a step is retried.

    Args:
        budget: seconds after the first failure within which retries may start (0: never retry).
        first_delay: seconds before the first retry.
        max_delay: the longest wait between two attempts.
        sleep: how to wait (tests pass a function that does not wait).
        clock: a monotonic clock in seconds (tests pass a fake one).
        jitter: draws the fraction (0.5 to 1) of each delay actually waited.
    """

    budget: float = field(default_factory=budget_from_environment)
    first_delay: float = 0.1
    max_delay: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    jitter: Callable[[], float] = field(default=lambda: random.uniform(0.5, 1.0))

    def __post_init__(self) -> None:
        for name in ("budget", "first_delay", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"RetryPolicy.{name} must be a finite number of seconds >= 0, got {value!r}")

    def delays(self) -> Iterator[float]:
        """The waits before retry 1, 2, ...: doubling from ``first_delay``, capped, jittered."""
        delay = self.first_delay
        while True:
            yield min(delay, self.max_delay) * self.jitter()
            delay *= 2

    def call(self, step: Callable[[], T], action: str) -> T:
        """Run ``step`` until it returns or raises an error that is not transient; retry a
        transient one while the budget lasts.

        Args:
            step: the idempotent step.
            action: what the step does, for the log (e.g. ``"storing checkpoint 3 of run 'a'"``).

        Returns:
            What ``step`` returned.

        Raises:
            The step's error: a non-transient one at once; a transient one when the next retry
            would start after the budget.
        """
        started = self.clock()
        delays = self.delays()
        attempt = 1
        while True:
            try:
                return step()
            except Exception as error:
                if not is_transient(error):
                    raise
                delay = next(delays)
                if self.clock() - started + delay > self.budget:
                    raise
                logger.warning(
                    "MongoDB: %s failed (attempt %d: %s); retrying in %.1f s",
                    action, attempt, _summary(error), delay,
                )
                self.sleep(delay)
                attempt += 1


def _summary(error: BaseException) -> str:
    """The first line of an error, without pymongo's topology description."""
    text = str(error).split(", Topology Description:")[0]
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


NO_RETRY = RetryPolicy(budget=0.0)
"""A policy that never retries (each step runs once)."""
