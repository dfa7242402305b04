"""Summaries of a trained run: its best checkpoint per (dataset, criterion), checked by reloading."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..checks import parameters_key
from ..stats_store import StatsStore
from ..weights_store import WeightsStore
from .run import Run
from .validate import Evaluation, evaluate


@dataclass(frozen=True)
class BestRow:
    """The best stored score of one (dataset, criterion).

    ``reloaded`` is the score of the weights ``load_best`` returned, evaluated again with the
    same parameters (equal to ``score`` when the store gives the right weights back);
    ``untrained`` the best score of the untrained model over all parameter sets (or ``None``).
    """

    dataset: str
    criterion: str
    iteration: int
    parameters: dict[str, Any]
    score: float
    reloaded: float
    untrained: float | None

    @property
    def reload_matches(self) -> bool:
        """Whether re-evaluating the reloaded weights reproduced the stored score."""
        return math.isclose(self.reloaded, self.score, rel_tol=1e-6, abs_tol=1e-9)


def best_rows(
    run: Run,
    weights_store: WeightsStore,
    stats_store: StatsStore,
    untrained: Sequence[Evaluation] | None = None,
    device: torch.device | str | None = None,
) -> list[BestRow]:
    """One :class:`BestRow` per validation dataset and criterion that has a (non-NaN) score.

    For each, ``weights_store.load_best`` loads the best weights into a fresh model (built from
    ``run.config``) which is evaluated again. ``untrained`` are the evaluations of the
    untrained model, if known.
    """
    fresh = Run(run.config, load_starter_model=False)
    reevaluated: dict[int, list[Evaluation]] = {}
    rows = []
    for dataset in run.validation_scores.datasets:
        for criterion, higher_is_better in run.task.criteria.items():
            if not stats_store.retrieve_validation_scores(run, dataset, criterion):
                continue
            best = stats_store.best_validation_score(run, dataset, criterion)
            iteration = weights_store.load_best(fresh, dataset, criterion)
            if iteration not in reevaluated:
                reevaluated[iteration] = evaluate(fresh, fresh.model, device)
            rows.append(
                BestRow(
                    dataset=dataset,
                    criterion=criterion,
                    iteration=iteration,
                    parameters=dict(best.parameters),
                    score=best.value,
                    reloaded=_score(reevaluated[iteration], dataset, best.parameters, criterion),
                    untrained=None if untrained is None else _best_of(untrained, dataset, criterion, higher_is_better),
                )
            )
    return rows


def format_rows(rows: Sequence[BestRow]) -> str:
    """A plain-text table of ``rows`` (with an "untrained" column when every row has one)."""
    with_untrained = bool(rows) and all(row.untrained is not None for row in rows)
    header = ["dataset", "criterion", "best iteration", "parameters", "score"]
    header += ["untrained"] if with_untrained else []
    header += ["load_best re-scored"]
    lines = [header]
    for row in rows:
        line = [row.dataset, row.criterion, str(row.iteration), _parameters_text(row.parameters), f"{row.score:.4f}"]
        line += [f"{row.untrained:.4f}"] if with_untrained else []
        line += [f"{row.reloaded:.4f} {'ok' if row.reload_matches else 'MISMATCH'}"]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def _parameters_text(parameters: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(parameters.items())) or "-"


def _score(evaluations: Sequence[Evaluation], dataset: str, parameters: Any, criterion: str) -> float:
    key = parameters_key(parameters)
    return next(
        e.scores[criterion]
        for e in evaluations
        if e.dataset == dataset and parameters_key(e.parameters) == key
    )


def _best_of(evaluations: Sequence[Evaluation], dataset: str, criterion: str, higher_is_better: bool) -> float:
    values = [e.scores[criterion] for e in evaluations if e.dataset == dataset and not math.isnan(e.scores[criterion])]
    if not values:
        return math.nan
    return max(values) if higher_is_better else min(values)
