"""Validation: scoring a model, or a stored checkpoint, on a run's validation datasets."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..config import create_weights_store
from ..stats_store import StatsStore
from ..weights_store import WeightsStore
from .run import Run

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Evaluation:
    """The scores (criterion -> value) of one validation dataset and parameter set."""

    dataset: str
    parameters: dict[str, Any]
    scores: dict[str, float]


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device``, or CUDA when available and the CPU otherwise.

    Raises:
        ValueError: not a device name, or a CUDA device while CUDA is not available.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"invalid device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested, but CUDA is not available here")
    return resolved


def evaluate(run: Run, model: torch.nn.Module, device: torch.device | str | None = None) -> list[Evaluation]:
    """Score ``model`` on every validation dataset of ``run`` with every post-processing
    parameter set of its task. ``model`` is put in eval mode on ``device``."""
    device = resolve_device(device)
    model.to(device).eval()
    evaluations = []
    for dataset in run.datasplit.validate:
        prediction = run.task.predict(model, torch.from_numpy(dataset.raw).to(device))
        for parameters in run.task.parameters:
            scores = run.task.evaluate(prediction, dataset.gt, parameters)
            evaluations.append(Evaluation(dataset.name, parameters, scores))
    return evaluations


def validate_run(
    run: Run,
    iteration: int,
    weights_store: WeightsStore | None = None,
    stats_store: StatsStore | None = None,
    device: torch.device | str | None = None,
    in_memory: bool = False,
) -> list[Evaluation]:
    """Evaluate checkpoint ``iteration`` of ``run`` (its model weights, read from
    ``weights_store``, default the configured store) on every validation dataset and parameter
    set; add the scores to ``run.validation_scores`` and, with a ``stats_store``, store them.
    ``run.model`` is left untouched. ``in_memory=True`` says that ``run.model`` holds the
    checkpoint's weights (it was just stored from it): they are evaluated as they are, and
    nothing is read from ``weights_store``.

    Returns:
        One :class:`Evaluation` per validation dataset and parameter set.

    Raises:
        CheckpointNotFoundError / CorruptCheckpointError: the checkpoint cannot be read.
    """
    model = copy.deepcopy(run.model)
    if not in_memory:
        weights_store = weights_store if weights_store is not None else create_weights_store()
        model.load_state_dict(weights_store.retrieve_weights(run, iteration, optimizer=False).model)
    evaluations = evaluate(run, model, device)
    criteria = run.task.criteria
    for e in evaluations:
        run.validation_scores.add_iteration_scores(iteration, e.dataset, e.parameters, e.scores)
        if stats_store is not None:
            stats_store.store_validation_scores(run, iteration, e.dataset, e.scores, criteria, e.parameters)
    logger.info("validated checkpoint %d of run %r", iteration, run.name)
    return evaluations
