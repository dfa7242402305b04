"""Validation score documents in MongoDB and the one query that finds the best one."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING

from ..errors import NoScoreError
from ..records import ValidationScore
from ..score_catalog import ScoreCatalog
from ..stats_store import ScoreRow, score_from_row
from .connection import MongoDatabase

SCORES_COLLECTION = "validation_scores"

SCORE_KEY_FIELDS = ("run", "dataset", "criterion", "iteration", "parameters")

SCORE_INDEXES = (
    ([(field, ASCENDING) for field in SCORE_KEY_FIELDS], {"name": "score_key", "unique": True}),
    (
        [
            ("run", ASCENDING),
            ("dataset", ASCENDING),
            ("criterion", ASCENDING),
            ("ranked", ASCENDING),
            ("rank", DESCENDING),
            ("iteration", ASCENDING),
            ("parameters", ASCENDING),
        ],
        {"name": "best_score"},
    ),
)
"""``best_score`` serves :func:`find_best_score` as one index scan with sort and limit."""

BEST_SORT = [("rank", DESCENDING), ("iteration", ASCENDING), ("parameters", ASCENDING)]


def score_document(row: ScoreRow) -> dict[str, Any]:
    """The stored document of a score row: user strings only as values; ``ranked`` is False
    for NaN scores, which never win."""
    return {**row, "ranked": row["rank"] is not None}


def find_best_score(collection: Any, run: str, dataset: str, criterion: str) -> dict[str, Any]:
    """Return the best score document of ``(run, dataset, criterion)``: one ``find`` with
    sort and limit on the ``best_score`` index.

    Raises:
        NoScoreError: no non-NaN score (naming the datasets or criteria that exist when
            ``dataset`` or ``criterion`` has no score at all).
    """
    document = collection.find_one(
        {"run": run, "dataset": dataset, "criterion": criterion, "ranked": True},
        projection={"_id": False},
        sort=BEST_SORT,
    )
    if document is None:
        raise NoScoreError.for_query(
            run, dataset, criterion, collection.distinct("dataset", {"run": run}),
            collection.distinct("criterion", {"run": run, "dataset": dataset}),
        )
    return document


ALL_BEST_SCORES_PIPELINE = [
    {"$match": {"ranked": True}},
    {"$sort": {"run": 1, "dataset": 1, "criterion": 1, "rank": -1, "iteration": 1, "parameters": 1}},
    {
        "$group": {
            "_id": {"run": "$run", "dataset": "$dataset", "criterion": "$criterion"},
            "best": {"$first": "$$ROOT"},
        }
    },
    {"$replaceRoot": {"newRoot": "$best"}},
    {"$project": {"_id": False}},
    {"$sort": {"run": 1, "dataset": 1, "criterion": 1}},
]
"""The best score document of every (run, dataset, criterion) in one aggregation: ranked
scores in :data:`BEST_SORT` order within each triple (the ``best_score`` index's order), the
first of each triple kept."""


def find_all_best_scores(collection: Any) -> list[dict[str, Any]]:
    """Return the best score document of every (run, dataset, criterion), sorted by them."""
    return list(collection.aggregate(ALL_BEST_SCORES_PIPELINE))


class MongoScoreCatalog(ScoreCatalog):
    """The validation scores collection ``scores`` (``<prefix>validation_scores``) of
    ``database`` (reads retried as every read of the database)."""

    def __init__(self, database: MongoDatabase, scores: Any) -> None:
        self.database = database
        self.scores = scores

    def best_score(self, run: str, dataset: str, criterion: str) -> ValidationScore:
        return score_from_row(
            self.database.read(
                f"finding the best score of run {run!r}", lambda: find_best_score(self.scores, run, dataset, criterion)
            )
        )

    def all_best_scores(self) -> list[ValidationScore]:
        documents = self.database.read("finding the best scores of every run", lambda: find_all_best_scores(self.scores))
        return [score_from_row(document) for document in documents]
