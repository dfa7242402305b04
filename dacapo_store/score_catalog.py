"""The catalog's best-score queries: the one place per backend where ``retrieve_best``
(weights) and ``best_validation_score``/``best_validation_scores`` (stats) are answered."""

from __future__ import annotations

from abc import ABC, abstractmethod

from .records import ValidationScore


class ScoreCatalog(ABC):
    """The validation scores of one catalog, asked for the best ones.

    Best is over all iterations and parameter sets, in the direction stored with each score;
    NaN never wins; ties go to the earliest iteration, then the smallest parameters.
    """

    @abstractmethod
    def best_score(self, run: str, dataset: str, criterion: str) -> ValidationScore:
        """The best score of ``run`` on ``(dataset, criterion)`` (names already checked): one
        indexed query.

        Raises:
            NoScoreError: no non-NaN score (naming the datasets or criteria that exist when the
                asked one has no score, or the missing store).
        """

    @abstractmethod
    def all_best_scores(self) -> list[ValidationScore]:
        """The best score of every (run, dataset, criterion), sorted by them: one query; a
        triple with only NaN scores is absent."""
