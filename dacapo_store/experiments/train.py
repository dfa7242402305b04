"""The training loop: train, checkpoint, validate, resume."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..maintenance.retention import RetentionPolicy, apply_retention
from ..stats_store import StatsStore
from ..weights_store import WeightsStore
from .resume import ResumePoint, resume_run
from .run import Run
from .validate import resolve_device, validate_run


def train_run(
    run: Run,
    weights_store: WeightsStore,
    stats_store: StatsStore,
    device: torch.device | str | None = None,
    progress: bool = True,
    retention: RetentionPolicy | None = None,
    async_checkpoint: bool = False,
) -> ResumePoint:
    """Train ``run`` until ``run.train_until``, resuming from what the stores hold.

    After every ``run.validation_interval`` iterations and at the end, with ``k`` the number of
    completed iterations: the new training stats are stored, then the weights as checkpoint
    ``k``, then checkpoint ``k`` is validated on every validation dataset and parameter set and
    its scores are stored. On (re)start, stats and weights are reconciled (see :mod:`.resume`)
    and every stored checkpoint that lacks a score (a run killed after storing weights) is
    validated first, so no score is lost. ``device`` defaults to CUDA when available;
    ``progress`` shows a progress bar. With a ``retention`` policy, on (re)start and every time
    a checkpoint's scores are stored, the checkpoints it does not keep are removed
    (:func:`~dacapo_store.maintenance.retention.apply_retention`; the latest checkpoint and the
    best of every (dataset, criterion) are always kept).

    With ``async_checkpoint``, each checkpoint is stored in the background
    (``store_weights(..., background=True)``) and training goes on while it uploads. Its
    validation then scores ``run.model`` as it is, which holds exactly the checkpoint's weights,
    instead of reading the checkpoint back. Before pruning, and when training ends (also by an
    error), the upload in flight is waited for, so the scores of a checkpoint never decide a
    prune before the checkpoint is stored, and a failed upload raises. A process killed
    meanwhile loses at most the checkpoint in flight: its scores are then newer than the latest
    checkpoint and are deleted on resume, which continues from the checkpoint before.

    One trainer per run: never train a run that another process is training. Resuming
    reconciles the stores with the latest checkpoint, so a second trainer deletes the first
    one's newer training stats and scores, and both then write the same checkpoints. Nothing
    detects this; keep run names unique per training job.

    Returns:
        Where training started from (the resume case).

    Raises:
        whatever the stores, the trainer or the task raise; the stores stay consistent and a
        later call resumes.
    """
    device = resolve_device(device)
    point = resume_run(run, weights_store, stats_store)
    run.model.to(device)
    run.move_optimizer(device)

    def retain() -> None:
        if retention is not None:
            weights_store.flush()
            apply_retention(weights_store, stats_store, run, retention, dry_run=False)

    for checkpoint in weights_store.list_checkpoints(run):
        if not run.validation_scores.is_complete(checkpoint.iteration):
            validate_run(run, checkpoint.iteration, weights_store, stats_store, device)
    retain()

    iteration = point.iteration
    try:
        _train(run, weights_store, stats_store, device, progress, retain, async_checkpoint, iteration)
    finally:
        weights_store.flush()
    return point


def _train(
    run: Run,
    weights_store: WeightsStore,
    stats_store: StatsStore,
    device: torch.device,
    progress: bool,
    retain: Callable[[], None],
    async_checkpoint: bool,
    iteration: int,
) -> None:
    """Train from ``iteration`` to ``run.train_until``, checkpointing and validating (see
    :func:`train_run`)."""
    with tqdm(
        total=run.train_until, initial=min(iteration, run.train_until), desc=run.name, unit="it", disable=not progress
    ) as bar:
        while iteration < run.train_until:
            stop = min((iteration // run.validation_interval + 1) * run.validation_interval, run.train_until)
            new_stats = []
            for stats in run.trainer.iterate(
                range(iteration, stop), run.model, run.optimizer, run.task, run.datasplit.train, device
            ):
                run.training_stats.add_iteration_stats(stats)
                new_stats.append(stats)
                bar.set_postfix(loss=f"{stats.loss:.4f}", refresh=False)
                bar.update()
            stats_store.store_training_stats(run, new_stats)
            weights_store.store_weights(run, stop, background=async_checkpoint)
            validate_run(run, stop, weights_store, stats_store, device, in_memory=async_checkpoint)
            retain()
            iteration = stop
