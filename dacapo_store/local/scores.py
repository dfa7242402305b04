"""The best-score queries of a local store's SQLite catalog (for both the weights and the
stats store)."""

from __future__ import annotations

from ..records import ValidationScore
from ..score_catalog import ScoreCatalog
from ..stats_store import score_from_row
from .catalog import ALL_BEST_SCORES_SQL, BEST_SCORE_SQL, Catalog, no_score_error


class LocalScoreCatalog(ScoreCatalog):
    """The ``validation_scores`` table of ``catalog``."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def best_score(self, run: str, dataset: str, criterion: str) -> ValidationScore:
        rows = self.catalog.query(BEST_SCORE_SQL, (run, dataset, criterion))
        if not rows:
            raise no_score_error(self.catalog, run, dataset, criterion)
        return score_from_row(rows[0])

    def all_best_scores(self) -> list[ValidationScore]:
        return [score_from_row(row) for row in self.catalog.query(ALL_BEST_SCORES_SQL)]
