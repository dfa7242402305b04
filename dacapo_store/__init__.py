"""dacapo-store: training checkpoints and validation scores of DaCapo-style runs, in MongoDB
(GridFS) or in a zero-setup local store."""

from .config import create_stats_store, create_weights_store, resolve_store
from .errors import (
    CheckpointChangedError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CheckpointNotStoredError,
    ConfigurationError,
    ConfigurationWarning,
    CorruptCheckpointError,
    DacapoStoreError,
    NoScoreError,
    NotAuthorizedError,
    ReadOnlyStoreError,
    StoreConnectionError,
    StoreNotFoundError,
    WriteConcernFailedError,
)
from .health import Finding
from .local import LocalStatsStore, LocalWeightsStore
from .mongo import MongoStatsStore, MongoWeightsStore
from .payload_memory import release_spare_memory
from .payload_store import PayloadStore
from .records import CheckpointInfo, PartInfo, RunTotals, TrainingIterationStats, ValidationScore, Weights
from .run_configs import RunConfigConflictError, RunConfigNotFoundError, RunConfigStore
from .stats_store import StatsStore
from .store import Store, open_store
from .weights_store import WeightsStore

__all__ = [
    "CheckpointChangedError",
    "CheckpointExistsError",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointNotStoredError",
    "ConfigurationError",
    "ConfigurationWarning",
    "CorruptCheckpointError",
    "DacapoStoreError",
    "Finding",
    "LocalStatsStore",
    "LocalWeightsStore",
    "MongoStatsStore",
    "MongoWeightsStore",
    "NoScoreError",
    "NotAuthorizedError",
    "PartInfo",
    "PayloadStore",
    "ReadOnlyStoreError",
    "RunConfigConflictError",
    "RunConfigNotFoundError",
    "RunConfigStore",
    "RunTotals",
    "StatsStore",
    "Store",
    "StoreConnectionError",
    "StoreNotFoundError",
    "TrainingIterationStats",
    "ValidationScore",
    "Weights",
    "WeightsStore",
    "WriteConcernFailedError",
    "create_stats_store",
    "create_weights_store",
    "open_store",
    "release_spare_memory",
    "resolve_store",
]
