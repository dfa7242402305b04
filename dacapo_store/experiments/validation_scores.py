"""``ValidationScores``: a run's validation scores, in memory.

Scores are indexed by checkpoint iteration x dataset x post-processing parameters x
criterion. Each criterion carries its own ``higher_is_better``. Best is the arg-best over
iterations and parameter sets, decided by :func:`dacapo_store.maintenance.ranking.best_scores`
(the stores' rule: NaN never wins; ties go to the earliest iteration, then to the parameter set
whose canonical JSON sorts first).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..checks import parameters_key
from ..errors import NoScoreError
from ..maintenance.ranking import best_scores
from ..records import ValidationScore


@dataclass(frozen=True)
class BestScore:
    """The best score of a (dataset, criterion): where it was reached and its value."""

    iteration: int
    parameters: dict[str, Any]
    value: float


class ValidationScores:
    """Validation scores of one run.

    Args:
        parameters: the post-processing parameter sets validation tries.
        datasets: the validation dataset names.
        criteria: criterion -> higher is better.
    """

    def __init__(
        self, parameters: Sequence[Mapping[str, Any]], datasets: Sequence[str], criteria: Mapping[str, bool]
    ) -> None:
        self.parameters = [dict(p) for p in parameters]
        self.datasets = list(datasets)
        self.criteria = dict(criteria)
        self._values: dict[tuple[int, str, str, str], float] = {}
        self._higher_is_better: dict[str, bool] = dict(criteria)

    def __repr__(self) -> str:
        return f"ValidationScores(iterations={self.iterations})"

    @property
    def iterations(self) -> list[int]:
        """The validated checkpoint iterations, increasing."""
        return sorted({key[0] for key in self._values})

    def add_iteration_scores(
        self, iteration: int, dataset: str, parameters: Mapping[str, Any], scores: Mapping[str, float]
    ) -> None:
        """Record (or replace) the scores of checkpoint ``iteration`` on ``dataset`` with
        ``parameters``; ``scores`` maps criterion -> value.

        Raises:
            ValueError: a criterion whose direction is unknown.
        """
        key = parameters_key(parameters)
        for criterion, value in scores.items():
            if criterion not in self._higher_is_better:
                raise ValueError(f"criterion {criterion!r} has no known higher_is_better")
            self._values[(iteration, dataset, key, criterion)] = float(value)

    def add_records(self, records: Iterable[ValidationScore]) -> None:
        """Add scores as the stats store returns them (their directions included)."""
        for record in records:
            self._higher_is_better.setdefault(record.criterion, record.higher_is_better)
            key = parameters_key(record.parameters)
            self._values[(record.iteration, record.dataset, key, record.criterion)] = record.value

    def is_complete(self, iteration: int) -> bool:
        """Whether checkpoint ``iteration`` has a score for every dataset, parameter set and criterion."""
        return all(
            (iteration, dataset, parameters_key(parameters), criterion) in self._values
            for dataset in self.datasets
            for parameters in self.parameters
            for criterion in self.criteria
        )

    def validated_until(self) -> int:
        """The highest validated checkpoint (= completed iterations it covers), 0 if none."""
        return max((key[0] for key in self._values), default=0)

    def delete_after(self, iteration: int) -> None:
        """Drop the scores of checkpoints after ``iteration`` (those of ``iteration`` stay)."""
        self._values = {key: value for key, value in self._values.items() if key[0] <= iteration}

    def get_best(self, dataset: str, criterion: str) -> BestScore:
        """The best score on ``(dataset, criterion)`` in the criterion's own direction.

        Raises:
            NoScoreError: no non-NaN score (a ``ValueError`` and ``LookupError``).
        """
        scores = (
            ValidationScore(
                run="",
                iteration=iteration,
                dataset=dataset,
                criterion=criterion,
                value=value,
                higher_is_better=self._higher_is_better[criterion],
                parameters=json.loads(key),
            )
            for (iteration, data, key, crit), value in self._values.items()
            if data == dataset and crit == criterion
        )
        best = best_scores(scores, lambda score: None).get(None)
        if best is None:
            raise NoScoreError(f"no non-NaN validation score for dataset {dataset!r}, criterion {criterion!r}")
        return BestScore(iteration=best.iteration, parameters=dict(best.parameters), value=best.value)
