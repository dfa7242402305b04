"""The zero-setup local backend: payload files and an embedded SQLite catalog."""

from .stats import LocalStatsStore
from .weights import LocalWeightsStore

__all__ = ["LocalStatsStore", "LocalWeightsStore"]
