"""Resuming a run: reconcile its stored statistics with its stored weights.

Checkpoint ``k`` holds the state after training iterations ``0..k-1``; the stats say the run
was trained until ``t`` (its last iteration + 1). With ``latest`` the newest checkpoint:

=====================  ============================================================
no weights             start from 0; stored stats and scores (if any) are deleted
weights behind stats   resume from ``latest``; stats and scores after it are deleted
weights equal stats    resume from ``latest``
weights ahead          resume from ``latest`` with a warning (its iterations' stats are missing)
=====================  ============================================================

Resuming loads the model AND optimizer state of the checkpoint, so training really continues.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..stats_store import StatsStore
from ..weights_store import WeightsStore
from .run import Run
from .training_stats import TrainingStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePoint:
    """Where training continues (``iteration``) and which case of the module docstring applied:
    ``"new"`` (nothing stored), ``"no_weights"``, ``"weights_behind"``, ``"equal"`` or
    ``"weights_ahead"``. ``trained_until`` is what the stored stats said before reconciling."""

    iteration: int
    case: str
    trained_until: int


def resume_run(run: Run, weights_store: WeightsStore, stats_store: StatsStore) -> ResumePoint:
    """Reconcile the stored stats of ``run`` with its stored weights, load the resume
    checkpoint into ``run.model`` and ``run.optimizer``, and fill ``run.training_stats`` and
    ``run.validation_scores`` from the store.

    Raises:
        CorruptCheckpointError: the resume checkpoint cannot be read.
    """
    training_stats = TrainingStats(stats_store.retrieve_training_stats(run))
    validation_scores = Run.get_validation_scores(run.config)
    validation_scores.add_records(stats_store.retrieve_validation_scores(run))
    latest = weights_store.latest_iteration(run)
    point = _decide(run.name, training_stats.trained_until(), latest)

    if training_stats.trained_until() > point.iteration:
        stats_store.delete_training_stats(run, after=point.iteration - 1 if point.iteration > 0 else None)
        training_stats.delete_after(point.iteration)
    if latest is None:  # no checkpoint: no score can belong to one
        stats_store.delete_validation_scores(run)
        validation_scores = Run.get_validation_scores(run.config)
    else:
        if validation_scores.validated_until() > point.iteration:
            stats_store.delete_validation_scores(run, after=point.iteration)
            validation_scores.delete_after(point.iteration)
        weights_store.load_weights(run, point.iteration)

    run.training_stats = training_stats
    run.validation_scores = validation_scores
    return point


def _decide(run: str, trained_until: int, latest: int | None) -> ResumePoint:
    if latest is None:
        if trained_until == 0:
            logger.info("run %r: nothing stored, starting from iteration 0", run)
            return ResumePoint(0, "new", trained_until)
        logger.warning(
            "run %r was trained until %d but has no stored weights: deleting its stats and "
            "scores and starting again from iteration 0",
            run,
            trained_until,
        )
        return ResumePoint(0, "no_weights", trained_until)
    if latest < trained_until:
        logger.warning(
            "run %r was trained until %d but its latest weights are of iteration %d: deleting "
            "the stats and scores after it and resuming from %d",
            run,
            trained_until,
            latest,
            latest,
        )
        return ResumePoint(latest, "weights_behind", trained_until)
    if latest == trained_until:
        logger.info("run %r: resuming from checkpoint %d", run, latest)
        return ResumePoint(latest, "equal", trained_until)
    logger.warning(
        "run %r has weights of iteration %d but stats only until %d: resuming from %d; the "
        "training stats of iterations %d..%d are missing",
        run,
        latest,
        trained_until,
        latest,
        trained_until,
        latest - 1,
    )
    return ResumePoint(latest, "weights_ahead", trained_until)
