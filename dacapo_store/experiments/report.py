"""Summaries of a trained run: its best checkpoint per (dataset, criterion), checked by reloading."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..checks import parameters_key
from ..errors import NoScoreError
from ..stats_store import StatsStore
from ..weights_store import WeightsStore
from .run import Run
from .validate import Evaluation, evaluate
from .validation_scores import ValidationScores


@dataclass(frozen=True)
class BestRow:
    """The best stored score of one (dataset, criterion).

    ``reloaded`` is the score of checkpoint ``iteration``, read back from the weights store
    into a fresh model and evaluated again with the same parameters (equal to ``score`` when
    the store gives the right weights back); ``untrained`` the best score of the untrained
    model over all parameter sets (NaN if all are NaN; ``None`` if unknown).
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


@dataclass(frozen=True)
class LoadBestCheck:
    """What ``load_best(run, dataset, criterion)`` loaded, compared with checkpoint
    ``expected`` (the best iteration of the stored scores) as ``retrieve_weights`` returns it."""

    dataset: str
    criterion: str
    loaded: int
    expected: int
    same_weights: bool

    @property
    def matches(self) -> bool:
        """Whether ``load_best`` loaded the expected checkpoint's model weights."""
        return self.loaded == self.expected and self.same_weights


@dataclass(frozen=True)
class BestReport:
    """The best checkpoints of a run: one :class:`BestRow` per (dataset, criterion) with a
    non-NaN score, the pairs without one (``unscored``), and the ``load_best`` check of the
    first row (``None`` without rows)."""

    rows: list[BestRow]
    unscored: list[tuple[str, str]]
    load_best: LoadBestCheck | None

    @property
    def ok(self) -> bool:
        """Whether every row re-scored as stored and ``load_best`` loaded the right weights."""
        return all(row.reload_matches for row in self.rows) and (self.load_best is None or self.load_best.matches)


def best_report(
    run: Run,
    weights_store: WeightsStore,
    stats_store: StatsStore,
    untrained: Sequence[Evaluation] | None = None,
    device: torch.device | str | None = None,
) -> BestReport:
    """Report the best checkpoint of every validation dataset and criterion of ``run``.

    For each pair, the stats store's best score gives the iteration; that checkpoint's model
    weights are read back (``retrieve_weights(..., optimizer=False)``) into a fresh model
    (built from ``run.config``) and evaluated again. A pair whose scores are all NaN (or
    missing) is listed in ``unscored``. ``load_best`` is called once, for the first row, and
    compared with ``retrieve_weights`` of that row's iteration. ``untrained`` are the
    evaluations of the untrained model, if known.

    Raises:
        CheckpointNotFoundError / CorruptCheckpointError: a best checkpoint cannot be read.
    """
    fresh = Run(run.config, load_starter_model=False)
    untrained_scores = None if untrained is None else _as_scores(run, untrained)
    reevaluated: dict[int, list[Evaluation]] = {}
    rows = []
    unscored = []
    for dataset in run.validation_scores.datasets:
        for criterion in run.task.criteria:
            try:
                best = stats_store.best_validation_score(run, dataset, criterion)
            except NoScoreError:
                unscored.append((dataset, criterion))
                continue
            if best.iteration not in reevaluated:
                fresh.model.load_state_dict(weights_store.retrieve_weights(run, best.iteration, optimizer=False).model)
                reevaluated[best.iteration] = evaluate(fresh, fresh.model, device)
            rows.append(
                BestRow(
                    dataset=dataset,
                    criterion=criterion,
                    iteration=best.iteration,
                    parameters=dict(best.parameters),
                    score=best.value,
                    reloaded=_score(reevaluated[best.iteration], dataset, best.parameters, criterion),
                    untrained=None if untrained_scores is None else _best_value(untrained_scores, dataset, criterion),
                )
            )
    load_best = _check_load_best(fresh, weights_store, rows[0]) if rows else None
    return BestReport(rows, unscored, load_best)


def _check_load_best(fresh: Run, weights_store: WeightsStore, row: BestRow) -> LoadBestCheck:
    loaded = weights_store.load_best(fresh, row.dataset, row.criterion)
    expected = weights_store.retrieve_weights(fresh, row.iteration, optimizer=False).model
    state = fresh.model.state_dict()
    same = state.keys() == expected.keys() and all(torch.equal(state[key].cpu(), expected[key]) for key in state)
    return LoadBestCheck(row.dataset, row.criterion, loaded, row.iteration, same)


def format_report(report: BestReport) -> str:
    """A plain-text table of the report's rows, then one line per unscored pair and the
    ``load_best`` check."""
    lines = [format_rows(report.rows)] if report.rows else []
    lines += [f"{dataset} / {criterion}: no best checkpoint (no non-NaN score)" for dataset, criterion in report.unscored]
    check = report.load_best
    if check is not None:
        outcome = (
            "the same weights as retrieve_weights"
            if check.matches
            else f"MISMATCH: expected the weights of checkpoint {check.expected}"
        )
        lines.append(
            f"load_best({check.dataset!r}, {check.criterion!r}) loaded checkpoint {check.loaded}: {outcome}."
        )
    return "\n".join(lines)


def format_rows(rows: Sequence[BestRow]) -> str:
    """A plain-text table of ``rows`` (with an "untrained" column when every row has one)."""
    with_untrained = bool(rows) and all(row.untrained is not None for row in rows)
    header = ["dataset", "criterion", "best iteration", "parameters", "score"]
    header += ["untrained"] if with_untrained else []
    header += ["re-scored"]
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


def _as_scores(run: Run, evaluations: Sequence[Evaluation]) -> ValidationScores:
    """``evaluations`` (of one model) as the scores of a notional checkpoint 0."""
    scores = Run.get_validation_scores(run.config)
    for e in evaluations:
        scores.add_iteration_scores(0, e.dataset, e.parameters, e.scores)
    return scores


def _best_value(scores: ValidationScores, dataset: str, criterion: str) -> float:
    try:
        return scores.get_best(dataset, criterion).value
    except NoScoreError:
        return math.nan
