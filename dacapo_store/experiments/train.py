"""The training loop: train, checkpoint, validate, resume."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..maintenance.retention import RetentionPolicy, apply_retention
from ..stats_store import StatsStore
from ..weights_store import WeightsStore
from .resume import ResumePoint, resume_run
from .run import Run
from .validate import resolve_device, validate_run


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
    on_checkpoint: Callable[[CheckpointProgress], None] | None = None,
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
    best of every (dataset, criterion) are always kept).

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
            apply_retention(weights_store, stats_store, run, retention, dry_run=False)

    for checkpoint in weights_store.list_checkpoints(run):
        if not run.validation_scores.is_complete(checkpoint.iteration):
            validate_run(run, checkpoint.iteration, weights_store, stats_store, device)
    retain()

    iteration = point.iteration
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
            stats_store.store_training_stats(run, new_stats)
            weights_store.store_weights(run, stop)
            validate_run(run, stop, weights_store, stats_store, device)
            retain()
            if on_checkpoint is not None:
                loss = sum(stats.loss for stats in new_stats) / len(new_stats)
                on_checkpoint(CheckpointProgress(stop, run.train_until, loss, len(new_stats) / max(seconds, 1e-9)))
            iteration = stop
    return point
