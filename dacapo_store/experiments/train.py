"""The training loop: train, checkpoint, validate, resume."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    CheckpointNotStoredError,
    StoreConnectionError,
    WriteConcernFailedError,
)
from ..maintenance.retention import RetentionPolicy, apply_retention
from ..stats_store import StatsStore
from ..weights_store import WeightsStore, describe
from .resume import ResumePoint, resume_run
from .run import Run
from .validate import resolve_device, validate_run

logger = logging.getLogger(__name__)

UNAVAILABLE_STORE_ERRORS = (StoreConnectionError, WriteConcernFailedError)
"""Store errors that may pass: the store unreachable (after the store's own retries), or a
write it could not confirm. Anything else fails training at once."""


@dataclass(frozen=True)
class StoreRetry:
    """How :func:`train_run` retries storing a checkpoint (and the training stats before it)
    while the store is unavailable: ``attempts`` in all, ``wait`` seconds apart, waiting with
    ``sleep``. Each attempt has the store's own retries inside (a MongoDB store keeps retrying
    for 60 s by default), so the defaults outlast about four minutes of outage."""

    attempts: int = 3
    wait: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"StoreRetry.attempts must be an integer >= 1, got {self.attempts!r}")
        if isinstance(self.wait, bool) or not isinstance(self.wait, (int, float)) or not 0 <= self.wait < float("inf"):
            raise ValueError(f"StoreRetry.wait must be a finite number of seconds >= 0, got {self.wait!r}")


def store_checkpoint(run: Run, iteration: int, weights_store: WeightsStore, retry: StoreRetry = StoreRetry()) -> None:
    """Store ``run``'s model and optimizer as checkpoint ``iteration``, retrying while the store
    is unavailable; the state stays in ``run`` meanwhile. If an attempt's commit landed although
    it reported an error, a later attempt finds the checkpoint stored and accepts it (one
    trainer per run: nobody else writes this checkpoint); after a commit that missed its write
    concern and could not be undone (it may or may not survive), a later attempt stores it
    again over it.

    Raises:
        CheckpointNotStoredError: every attempt failed (the last error is chained).
        Any other store error at once (CheckpointExistsError on the first attempt among them).
    """
    uncertain: list[WriteConcernFailedError] = []

    def store(attempt: int) -> None:
        try:
            _store_or_accept_landed(run, iteration, weights_store, attempt, overwrite=bool(uncertain))
        except WriteConcernFailedError as error:
            if error.commit_may_survive:
                uncertain.append(error)
            raise

    attempt_store(f"store {describe(run.name, iteration)}", retry, store)


def _store_or_accept_landed(
    run: Run, iteration: int, weights_store: WeightsStore, attempt: int, overwrite: bool = False
) -> None:
    try:
        weights_store.store_weights(run, iteration, overwrite=overwrite)
    except CheckpointExistsError:
        if attempt == 1:
            raise
        try:
            weights_store.checkpoint_info(run, iteration)
        except CheckpointNotFoundError:
            raise CheckpointExistsError(
                f"{describe(run.name, iteration)} is still reserved by an earlier attempt that "
                "could not clean up; `dacapo-store gc` reclaims it once it is stale"
            ) from None
        logger.warning("%s was stored by an earlier attempt whose reply was lost", describe(run.name, iteration))


def attempt_store(what: str, retry: StoreRetry, step: Callable[[int], None]) -> None:
    """Run ``step(attempt)`` until it succeeds, up to ``retry.attempts`` times while it fails
    with a store that is unavailable (:data:`UNAVAILABLE_STORE_ERRORS`), waiting in between.

    Raises:
        CheckpointNotStoredError: every attempt failed; the message says what could not be
            stored (``what``) and why.
    """
    for attempt in range(1, retry.attempts + 1):
        try:
            return step(attempt)
        except UNAVAILABLE_STORE_ERRORS as error:
            if attempt == retry.attempts:
                raise CheckpointNotStoredError(
                    f"could not {what} after {retry.attempts} attempts ({error}); training stopped "
                    "so that no checkpoint is lost silently: run it again to resume from the last "
                    "stored checkpoint"
                ) from error
            logger.warning(
                "could not %s (attempt %d of %d: %s); the training state is kept, retrying in %g s",
                what, attempt, retry.attempts, error, retry.wait,
            )
            retry.sleep(retry.wait)


@dataclass(frozen=True)
class CheckpointProgress:
    """Where training stands once checkpoint ``iteration`` of ``total`` is stored and validated:
    the mean ``loss`` of the iterations since the previous checkpoint and their rate
    (``iterations_per_second``, training time only)."""

    iteration: int
    total: int
    loss: float
    iterations_per_second: float


def train_run(
    run: Run,
    weights_store: WeightsStore,
    stats_store: StatsStore,
    device: torch.device | str | None = None,
    progress: bool = True,
    retention: RetentionPolicy | None = None,
    store_retry: StoreRetry = StoreRetry(),
    on_checkpoint: Callable[[CheckpointProgress], None] | None = None,
    async_checkpoint: bool = False,
) -> ResumePoint:
    """Train ``run`` until ``run.train_until``, resuming from what the stores hold.

    After every ``run.validation_interval`` iterations and at the end, with ``k`` the number of
    completed iterations: the new training stats are stored, then the weights as checkpoint
    ``k``, then checkpoint ``k`` is validated on every validation dataset and parameter set and
    its scores are stored. On (re)start, stats and weights are reconciled (see :mod:`.resume`)
    and every stored checkpoint that lacks a score (a run killed after storing weights) is
    validated first, so no score is lost. ``device`` defaults to CUDA when available;
    ``progress`` shows a progress bar while there is training to do (none for a complete run);
    ``on_checkpoint`` is called after each new checkpoint is stored and validated (e.g. to log a
    line where no progress bar can show). With a ``retention`` policy, on (re)start and every time
    a checkpoint's scores are stored, the checkpoints it does not keep are removed
    (:func:`~dacapo_store.maintenance.retention.apply_retention`; the latest checkpoint and the
    best of every (dataset, criterion) are always kept). While the store is unavailable, storing
    the training stats and the checkpoint is retried as ``store_retry`` says (the training state
    stays in memory); if it never succeeds, training stops with CheckpointNotStoredError, and a
    later call resumes from the last stored checkpoint.

    With ``async_checkpoint``, each checkpoint is stored in the background
    (``store_weights(..., background=True)``) and training goes on while it uploads. Its
    validation then scores ``run.model`` as it is, which holds exactly the checkpoint's weights,
    instead of reading the checkpoint back. Before pruning, and when training ends (also by an
    error), the upload in flight is waited for, so the scores of a checkpoint never decide a
    prune before the checkpoint is stored, and a failed upload raises. A background upload is
    not retried (the model has moved on by the time it fails): a store that stays unavailable
    stops training with CheckpointNotStoredError at the next checkpoint. A process killed
    meanwhile loses at most the checkpoint in flight: its scores are then newer than the latest
    checkpoint and are deleted on resume, which continues from the checkpoint before.

    One trainer per run: never train a run that another process is training. Resuming
    reconciles the stores with the latest checkpoint, so a second trainer deletes the first
    one's newer training stats and scores, and both then write the same checkpoints. Nothing
    detects this; keep run names unique per training job.

    Returns:
        Where training started from (the resume case).

    Raises:
        CheckpointNotStoredError: the store stayed unavailable through every retry.
        whatever else the stores, the trainer or the task raise; the stores stay consistent and
        a later call resumes.
    """
    device = resolve_device(device)
    point = resume_run(run, weights_store, stats_store)
    run.model.to(device)
    run.move_optimizer(device)

    def retain() -> None:
        if retention is not None:
            _flush(weights_store, run)
            apply_retention(weights_store, stats_store, run, retention, dry_run=False)

    for checkpoint in weights_store.list_checkpoints(run):
        if not run.validation_scores.is_complete(checkpoint.iteration):
            validate_run(run, checkpoint.iteration, weights_store, stats_store, device)
    retain()

    try:
        _train(run, point.iteration, weights_store, stats_store, device, progress, retain, store_retry, on_checkpoint,
               async_checkpoint)
    finally:
        _flush(weights_store, run)
    return point


def _flush(weights_store: WeightsStore, run: Run) -> None:
    """Wait for the background upload in flight (see :func:`train_run`).

    Raises:
        CheckpointNotStoredError: the store was unavailable (the store's error is chained).
        the upload's other errors as they are.
    """
    try:
        weights_store.flush()
    except UNAVAILABLE_STORE_ERRORS as error:
        raise CheckpointNotStoredError(
            f"could not store a checkpoint of run {run.name!r} in the background ({error}); training "
            "stopped so that no checkpoint is lost silently: run it again to resume from the last "
            "stored checkpoint"
        ) from error


def _train(
    run: Run,
    iteration: int,
    weights_store: WeightsStore,
    stats_store: StatsStore,
    device: torch.device,
    progress: bool,
    retain: Callable[[], None],
    store_retry: StoreRetry,
    on_checkpoint: Callable[[CheckpointProgress], None] | None,
    async_checkpoint: bool,
) -> None:
    """Train from ``iteration`` to ``run.train_until``, checkpointing and validating (see
    :func:`train_run`)."""
    with tqdm(
        total=run.train_until,
        initial=min(iteration, run.train_until),
        desc=run.name,
        unit="it",
        disable=not progress or iteration >= run.train_until,
    ) as bar:
        while iteration < run.train_until:
            stop = min((iteration // run.validation_interval + 1) * run.validation_interval, run.train_until)
            new_stats = []
            started = time.perf_counter()
            for stats in run.trainer.iterate(
                range(iteration, stop), run.model, run.optimizer, run.task, run.datasplit.train, device
            ):
                run.training_stats.add_iteration_stats(stats)
                new_stats.append(stats)
                bar.set_postfix(loss=f"{stats.loss:.4f}", refresh=False)
                bar.update()
            seconds = time.perf_counter() - started
            attempt_store(
                f"store the training stats of run {run.name!r} up to iteration {stop}", store_retry,
                lambda attempt: stats_store.store_training_stats(run, new_stats),
            )
            if async_checkpoint:
                _flush(weights_store, run)  # the previous checkpoint's upload, and its error
                weights_store.store_weights(run, stop, background=True)
            else:
                store_checkpoint(run, stop, weights_store, store_retry)
            validate_run(run, stop, weights_store, stats_store, device, in_memory=async_checkpoint)
            retain()
            if on_checkpoint is not None:
                loss = sum(stats.loss for stats in new_stats) / len(new_stats)
                on_checkpoint(CheckpointProgress(stop, run.train_until, loss, len(new_stats) / max(seconds, 1e-9)))
            iteration = stop
