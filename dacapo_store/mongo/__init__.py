"""The MongoDB backend: GridFS payloads, catalog and score collections."""

from .stats import MongoStatsStore
from .weights import MongoWeightsStore

__all__ = ["MongoStatsStore", "MongoWeightsStore"]
