"""The stats store contract: training statistics and validation scores of runs."""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

from .checks import (
    check_iteration,
    check_name,
    check_score,
    check_scores,
    dataset_name_of,
    parameters_key,
    run_name_of,
)
from .records import TrainingIterationStats, ValidationScore, score_rank
from .score_catalog import ScoreCatalog

RunLike = Any


class ScoreRow(dict):
    """One validation score as the backends store it (all values, no user field names).

    Keys: run, iteration, dataset, criterion, parameters (canonical JSON text), value (float,
    may be NaN), higher_is_better (bool), rank (float or None for NaN).
    """


def score_rows(
    run: str,
    iteration: int,
    dataset: str,
    scores: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    parameters: Mapping[str, Any] | None,
) -> list[ScoreRow]:
    """Validate one call of ``store_validation_scores`` and return its rows (raises as it)."""
    key = parameters_key(parameters)
    return [
        ScoreRow(
            run=run,
            iteration=iteration,
            dataset=dataset,
            criterion=criterion,
            parameters=key,
            value=value,
            higher_is_better=direction,
            rank=score_rank(value, direction),
        )
        for criterion, value, direction in check_scores(scores, higher_is_better)
    ]


def score_from_row(row: Mapping[str, Any]) -> ValidationScore:
    """Turn a stored row back into a :class:`ValidationScore` (a ``None`` value means NaN)."""
    value = row["value"]
    return ValidationScore(
        run=row["run"],
        iteration=int(row["iteration"]),
        dataset=row["dataset"],
        criterion=row["criterion"],
        value=math.nan if value is None else float(value),
        higher_is_better=bool(row["higher_is_better"]),
        parameters=json.loads(row["parameters"]),
    )


class StatsStore(ABC):
    """Stores per-iteration training statistics and validation scores of runs.

    Subclasses implement the ``_``-prefixed primitives and set :attr:`score_catalog`.
    """

    score_catalog: ScoreCatalog
    """The backend's best-score queries (shared with its weights store's ``retrieve_best``)."""

    def store_training_stats(self, run: RunLike, stats: Iterable[TrainingIterationStats]) -> None:
        """Store (insert or replace by iteration) training statistics of ``run``.

        Raises:
            TypeError / ValueError: a bad run name, iteration, loss or time; nothing is written.
        """
        name = run_name_of(run)
        rows = []
        for item in stats:
            if not isinstance(item, TrainingIterationStats):
                raise TypeError(f"expected TrainingIterationStats, got {type(item).__name__}")
            rows.append(
                TrainingIterationStats(
                    check_iteration(item.iteration),
                    check_score(item.loss, "loss"),
                    check_score(item.time, "time"),
                )
            )
        if rows:
            self._put_training_stats(name, rows)

    def retrieve_training_stats(self, run: RunLike) -> list[TrainingIterationStats]:
        """Return the training statistics of ``run`` by increasing iteration (empty if none)."""
        return self._get_training_stats(run_name_of(run))

    def delete_training_stats(self, run: RunLike, after: int | None = None) -> int:
        """Delete the training statistics of ``run`` (only iterations > ``after`` if given).

        Returns:
            How many iterations were deleted.
        """
        return self._delete_training_stats(run_name_of(run), _after(after))

    def store_validation_scores(
        self,
        run: RunLike,
        iteration: int,
        dataset: str,
        scores: Mapping[str, float],
        higher_is_better: Mapping[str, bool],
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        """Store the scores of checkpoint ``iteration`` on ``dataset`` for one parameter set.

        ``scores`` maps criterion -> score (NaN and +-inf allowed), ``higher_is_better`` maps
        criterion -> direction, ``parameters`` is a JSON-able mapping of post-processing
        parameters (``None`` = no parameters). A score already stored for the same (iteration,
        dataset, criterion, parameters) is replaced.

        Raises:
            TypeError / ValueError: any bad input, naming it; nothing is written.
        """
        rows = score_rows(
            run_name_of(run),
            check_iteration(iteration),
            check_name(dataset, "dataset"),
            scores,
            higher_is_better,
            parameters,
        )
        if rows:
            self._put_scores(rows)

    def retrieve_validation_scores(
        self, run: RunLike, dataset: str | None = None, criterion: str | None = None
    ) -> list[ValidationScore]:
        """Return the validation scores of ``run`` (optionally of one dataset/criterion),
        ordered by iteration, dataset, criterion, parameters."""
        return self._get_scores(
            run_name_of(run),
            None if dataset is None else check_name(dataset, "dataset"),
            None if criterion is None else check_name(criterion, "criterion"),
        )

    def delete_validation_scores(self, run: RunLike, after: int | None = None) -> int:
        """Delete the validation scores of ``run`` (only iterations > ``after`` if given).

        Returns:
            How many scores were deleted.
        """
        return self._delete_scores(run_name_of(run), _after(after))

    def best_validation_score(self, run: RunLike, dataset: Any, criterion: str) -> ValidationScore:
        """Return the best score of ``run`` on ``(dataset, criterion)`` (one indexed query).

        ``dataset`` is a name or a dataset object with ``.name`` (as DaCapo passes).

        NaN never wins; ties go to the earliest iteration.

        Raises:
            NoScoreError: no non-NaN score (a ``ValueError`` and ``LookupError``).
        """
        return self.score_catalog.best_score(
            run_name_of(run), dataset_name_of(dataset), check_name(criterion, "criterion")
        )

    def best_validation_scores(self) -> list[ValidationScore]:
        """Return the best score of every (run, dataset, criterion) in the store, sorted by
        run, dataset and criterion: one query over all runs, by the rule of
        :meth:`best_validation_score` (NaN never wins, ties go to the earliest iteration, then
        the smallest parameters); a triple with only NaN scores is absent."""
        return self.score_catalog.all_best_scores()

    @abstractmethod
    def list_runs(self) -> list[str]:
        """Return the names of runs with training stats or validation scores, sorted."""

    @abstractmethod
    def _put_training_stats(self, run: str, stats: list[TrainingIterationStats]) -> None: ...

    @abstractmethod
    def _get_training_stats(self, run: str) -> list[TrainingIterationStats]: ...

    @abstractmethod
    def _delete_training_stats(self, run: str, after: int | None) -> int: ...

    @abstractmethod
    def _put_scores(self, rows: list[ScoreRow]) -> None:
        """Upsert rows in one atomic batch where the backend allows."""

    @abstractmethod
    def _get_scores(
        self, run: str, dataset: str | None, criterion: str | None
    ) -> list[ValidationScore]: ...

    @abstractmethod
    def _delete_scores(self, run: str, after: int | None) -> int: ...


def _after(after: int | None) -> int | None:
    return None if after is None else check_iteration(after)
