"""The MongoDB stats store: ``training_stats`` and ``validation_scores`` collections."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError
from pymongo.write_concern import WriteConcern

from ..records import TrainingIterationStats, ValidationScore
from ..stats_store import ScoreRow, StatsStore, score_from_row
from .connection import DEFAULT_COLLECTION_PREFIX, MongoDatabase
from .retry import RetryPolicy
from .scores import (
    SCORE_INDEXES,
    SCORE_KEY_FIELDS,
    SCORES_COLLECTION,
    MongoScoreCatalog,
    score_document,
)

TRAINING_STATS_COLLECTION = "training_stats"
TRAINING_STATS_INDEXES = (
    ([("run", ASCENDING), ("iteration", ASCENDING)], {"name": "run_iteration", "unique": True}),
)
DUPLICATE_KEY = 11000


def upsert_many(collection: Any, documents: list[dict[str, Any]], key_fields: tuple[str, ...]) -> None:
    """Insert ``documents``, replacing those whose unique key already exists.

    New documents (the common case) go in one ``insert_many`` round trip; only duplicates are
    replaced one by one. Idempotent: running it again (a retry) writes the same documents.

    Raises:
        BulkWriteError: a write error other than a duplicate key, or any ``writeConcernError``
            (the documents landed but their write concern was not met).
        WriteConcernError: a replacement missed its write concern.
    """
    try:
        collection.insert_many([dict(document) for document in documents], ordered=False)
    except BulkWriteError as error:
        errors = error.details.get("writeErrors", [])
        if error.details.get("writeConcernErrors") or any(item.get("code") != DUPLICATE_KEY for item in errors):
            raise
        for item in errors:
            document = documents[item["index"]]
            collection.replace_one({field: document[field] for field in key_fields}, document, upsert=True)


class MongoStatsStore(StatsStore):
    """Training stats and validation scores in the ``<prefix>training_stats`` and
    ``<prefix>validation_scores`` collections (shared with a :class:`MongoWeightsStore` on the
    same database and prefix).

    Args and raises: as :class:`MongoWeightsStore` (``db_host``, ``db_name``, ``write_concern``,
    ``read_only``, ``retry``, ``collection_prefix``). Every write is idempotent and retried like
    the weights store's.
    """

    def __init__(
        self,
        db_host: Any,
        db_name: str | None = None,
        write_concern: WriteConcern | None = None,
        read_only: bool = False,
        retry: RetryPolicy | None = None,
        collection_prefix: str = DEFAULT_COLLECTION_PREFIX,
    ) -> None:
        self.database = MongoDatabase.of(db_host, db_name, write_concern, read_only, retry, collection_prefix)
        self.training_stats = self.database.collection(TRAINING_STATS_COLLECTION)
        self.scores = self.database.collection(SCORES_COLLECTION)
        self.database.ensure_indexes(self.training_stats, TRAINING_STATS_INDEXES)
        self.database.ensure_indexes(self.scores, SCORE_INDEXES)

    @property
    def score_catalog(self) -> MongoScoreCatalog:
        """The best-score queries on :attr:`scores` (one place for weights and stats)."""
        return MongoScoreCatalog(self.database, self.scores)

    def __repr__(self) -> str:
        return f"MongoStatsStore({self.database.display!r}, db_name={self.database.db_name!r})"

    def list_runs(self) -> list[str]:
        return self.database.read(
            "listing runs",
            lambda: sorted(set(self.training_stats.distinct("run")) | set(self.scores.distinct("run"))),
        )

    def _put_training_stats(self, run: str, stats: list[TrainingIterationStats]) -> None:
        documents = [
            {"run": run, "iteration": s.iteration, "loss": s.loss, "time": s.time} for s in stats
        ]
        self.database.write(
            f"storing the training stats of run {run!r}",
            lambda: upsert_many(self.training_stats, documents, ("run", "iteration")),
        )

    def _get_training_stats(self, run: str) -> list[TrainingIterationStats]:
        documents = self.database.read(
            f"reading the training stats of run {run!r}",
            lambda: list(self.training_stats.find({"run": run}, sort=[("iteration", ASCENDING)])),
        )
        return [TrainingIterationStats(d["iteration"], d["loss"], d["time"]) for d in documents]

    def _delete_training_stats(self, run: str, after: int | None) -> int:
        return self.database.write(
            f"deleting training stats of run {run!r}",
            lambda: self.training_stats.delete_many(_run_after(run, after)).deleted_count,
        )

    def _put_scores(self, rows: list[ScoreRow]) -> None:
        documents = [score_document(row) for row in rows]
        self.database.write(
            "storing validation scores", lambda: upsert_many(self.scores, documents, SCORE_KEY_FIELDS)
        )

    def _get_scores(self, run: str, dataset: str | None, criterion: str | None) -> list[ValidationScore]:
        query: dict[str, Any] = {"run": run}
        if dataset is not None:
            query["dataset"] = dataset
        if criterion is not None:
            query["criterion"] = criterion
        sort = [("iteration", ASCENDING), ("dataset", ASCENDING), ("criterion", ASCENDING), ("parameters", ASCENDING)]
        documents = self.database.read(
            f"reading the validation scores of run {run!r}",
            lambda: list(self.scores.find(query, projection={"_id": False}, sort=sort)),
        )
        return [score_from_row(document) for document in documents]

    def _delete_scores(self, run: str, after: int | None) -> int:
        return self.database.write(
            f"deleting validation scores of run {run!r}",
            lambda: self.scores.delete_many(_run_after(run, after)).deleted_count,
        )


def _run_after(run: str, after: int | None) -> dict[str, Any]:
    return {"run": run} if after is None else {"run": run, "iteration": {"$gt": after}}
