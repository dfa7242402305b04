"""The MongoDB stats store: ``training_stats`` and ``validation_scores`` collections."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError
from pymongo.write_concern import WriteConcern

from ..records import TrainingIterationStats, ValidationScore
from ..stats_store import ScoreRow, StatsStore, score_from_row
from .connection import DEFAULT_COLLECTION_PREFIX, DEFAULT_WRITE_CONCERN, MongoDatabase
from .scores import SCORE_INDEXES, SCORE_KEY_FIELDS, SCORES_COLLECTION, find_best_score, score_document

TRAINING_STATS_COLLECTION = "training_stats"
TRAINING_STATS_INDEXES = (
    ([("run", ASCENDING), ("iteration", ASCENDING)], {"name": "run_iteration", "unique": True}),
)
DUPLICATE_KEY = 11000


def upsert_many(collection: Any, documents: list[dict[str, Any]], key_fields: tuple[str, ...]) -> None:
    """Insert ``documents``, replacing those whose unique key already exists.

    New documents (the common case) go in one ``insert_many`` round trip; only duplicates are
    replaced one by one.
    """
    try:
        collection.insert_many([dict(document) for document in documents], ordered=False)
    except BulkWriteError as error:
        errors = error.details.get("writeErrors", [])
        if any(item.get("code") != DUPLICATE_KEY for item in errors):
            raise
        for item in errors:
            document = documents[item["index"]]
            collection.replace_one({field: document[field] for field in key_fields}, document, upsert=True)


class MongoStatsStore(StatsStore):
    """Training stats and validation scores in the ``<prefix>training_stats`` and
    ``<prefix>validation_scores`` collections (shared with a :class:`MongoWeightsStore` on the
    same database and prefix).

    Args and raises: as :class:`MongoWeightsStore`.
    """

    def __init__(
        self,
        db_host: Any,
        db_name: str = "dacapo",
        write_concern: WriteConcern = DEFAULT_WRITE_CONCERN,
        collection_prefix: str = DEFAULT_COLLECTION_PREFIX,
    ) -> None:
        self.database = MongoDatabase(db_host, db_name, write_concern, collection_prefix)
        self.training_stats = self.database.collection(TRAINING_STATS_COLLECTION)
        self.scores = self.database.collection(SCORES_COLLECTION)
        self.database.ensure_indexes(self.training_stats, TRAINING_STATS_INDEXES)
        self.database.ensure_indexes(self.scores, SCORE_INDEXES)

    def __repr__(self) -> str:
        return f"MongoStatsStore({self.database.display!r}, db_name={self.database.db_name!r})"

    def list_runs(self) -> list[str]:
        return sorted(set(self.training_stats.distinct("run")) | set(self.scores.distinct("run")))

    def _put_training_stats(self, run: str, stats: list[TrainingIterationStats]) -> None:
        documents = [
            {"run": run, "iteration": s.iteration, "loss": s.loss, "time": s.time} for s in stats
        ]
        upsert_many(self.training_stats, documents, ("run", "iteration"))

    def _get_training_stats(self, run: str) -> list[TrainingIterationStats]:
        documents = self.training_stats.find({"run": run}, sort=[("iteration", ASCENDING)])
        return [TrainingIterationStats(d["iteration"], d["loss"], d["time"]) for d in documents]

    def _delete_training_stats(self, run: str, after: int | None) -> int:
        return self.training_stats.delete_many(_run_after(run, after)).deleted_count

    def _put_scores(self, rows: list[ScoreRow]) -> None:
        upsert_many(self.scores, [score_document(row) for row in rows], SCORE_KEY_FIELDS)

    def _get_scores(self, run: str, dataset: str | None, criterion: str | None) -> list[ValidationScore]:
        query: dict[str, Any] = {"run": run}
        if dataset is not None:
            query["dataset"] = dataset
        if criterion is not None:
            query["criterion"] = criterion
        documents = self.scores.find(
            query,
            projection={"_id": False},
            sort=[("iteration", ASCENDING), ("dataset", ASCENDING), ("criterion", ASCENDING), ("parameters", ASCENDING)],
        )
        return [score_from_row(document) for document in documents]

    def _delete_scores(self, run: str, after: int | None) -> int:
        return self.scores.delete_many(_run_after(run, after)).deleted_count

    def _best_score(self, run: str, dataset: str, criterion: str) -> ValidationScore:
        return score_from_row(find_best_score(self.scores, run, dataset, criterion))


def _run_after(run: str, after: int | None) -> dict[str, Any]:
    return {"run": run} if after is None else {"run": run, "iteration": {"$gt": after}}
