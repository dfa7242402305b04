"""The local stats store: training statistics and validation scores in the SQLite catalog."""

from __future__ import annotations

import math
import os

from ..records import TrainingIterationStats, ValidationScore
from ..stats_store import ScoreRow, StatsStore, score_from_row
from .catalog import Catalog
from .scores import LocalScoreCatalog


def _nan_from_null(value: float | None) -> float:
    return math.nan if value is None else value


class LocalStatsStore(StatsStore):
    """Training stats and validation scores in ``basedir/catalog.sqlite3`` (shared with
    :class:`LocalWeightsStore` on the same ``basedir``).

    Args and raises: as :class:`LocalWeightsStore` (``basedir``, ``read_only``).
    """

    def __init__(self, basedir: str | os.PathLike, read_only: bool = False) -> None:
        self.catalog = Catalog.of(basedir, read_only)
        self.basedir = self.catalog.basedir
        self.score_catalog = LocalScoreCatalog(self.catalog)

    def __repr__(self) -> str:
        return f"LocalStatsStore({str(self.basedir)!r})"

    def list_runs(self) -> list[str]:
        rows = self.catalog.query(
            "SELECT run FROM training_stats UNION SELECT run FROM validation_scores ORDER BY run"
        )
        return [row["run"] for row in rows]

    def _put_training_stats(self, run: str, stats: list[TrainingIterationStats]) -> None:
        with self.catalog.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO training_stats (run, iteration, loss, time) VALUES (?, ?, ?, ?)",
                [(run, s.iteration, s.loss, s.time) for s in stats],
            )

    def _get_training_stats(self, run: str) -> list[TrainingIterationStats]:
        rows = self.catalog.query(
            "SELECT iteration, loss, time FROM training_stats WHERE run = ? ORDER BY iteration", (run,)
        )
        return [
            TrainingIterationStats(r["iteration"], _nan_from_null(r["loss"]), _nan_from_null(r["time"]))
            for r in rows
        ]

    def _delete_training_stats(self, run: str, after: int | None) -> int:
        with self.catalog.transaction() as db:
            return db.execute(
                "DELETE FROM training_stats WHERE run = ? AND iteration > ?",
                (run, -1 if after is None else after),
            ).rowcount

    def _put_scores(self, rows: list[ScoreRow]) -> None:
        with self.catalog.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO validation_scores"
                " (run, dataset, criterion, iteration, parameters, value, higher_is_better, rank)"
                " VALUES (:run, :dataset, :criterion, :iteration, :parameters, :value,"
                " :higher_is_better, :rank)",
                rows,
            )

    def _get_scores(self, run: str, dataset: str | None, criterion: str | None) -> list[ValidationScore]:
        rows = self.catalog.query(
            "SELECT * FROM validation_scores WHERE run = ?"
            " AND (? IS NULL OR dataset = ?) AND (? IS NULL OR criterion = ?)"
            " ORDER BY iteration, dataset, criterion, parameters",
            (run, dataset, dataset, criterion, criterion),
        )
        return [score_from_row(row) for row in rows]

    def _delete_scores(self, run: str, after: int | None) -> int:
        with self.catalog.transaction() as db:
            return db.execute(
                "DELETE FROM validation_scores WHERE run = ? AND iteration > ?",
                (run, -1 if after is None else after),
            ).rowcount
