"""The experiment layer: runs built from typed configs, trained into the store.

``RunConfig`` -> ``Run`` (task, architecture, trainer, datasplit, model, optimizer, stats) ->
``train_run`` (train, checkpoint, validate, resume). Plug-ins are resolved by :mod:`.registry`;
the built-in ones live in :mod:`.plugins`. Run configs are stored by name in a
:class:`RunConfigStore` beside the weights and stats.
"""

from .config_store import (
    LocalRunConfigStore,
    MongoRunConfigStore,
    RunConfigConflictError,
    RunConfigNotFoundError,
    RunConfigStore,
    create_run_config_store,
)
from .configs import (
    ArchitectureConfig,
    Config,
    ConfigError,
    DataSplitConfig,
    PluginConfig,
    StartConfig,
    TaskConfig,
    TrainerConfig,
)
from .interfaces import Architecture, DataSplit, Dataset, Start, StartReport, Task, Trainer
from .plugins import (
    BinarySegmentationConfig,
    CheckpointStartConfig,
    GradientTrainerConfig,
    NpyDataSplitConfig,
    NpyDatasetConfig,
    SyntheticDataSplitConfig,
    UNetConfig,
)
from .registry import register
from .resume import ResumePoint, resume_run
from .run import Run
from .run_config import RunConfig
from .train import train_run
from .training_stats import TrainingStats
from .validate import Evaluation, evaluate, validate_run
from .validation_scores import BestScore, ValidationScores

__all__ = [
    "Architecture",
    "ArchitectureConfig",
    "BestScore",
    "BinarySegmentationConfig",
    "CheckpointStartConfig",
    "Config",
    "ConfigError",
    "DataSplit",
    "DataSplitConfig",
    "Dataset",
    "Evaluation",
    "GradientTrainerConfig",
    "LocalRunConfigStore",
    "MongoRunConfigStore",
    "NpyDataSplitConfig",
    "NpyDatasetConfig",
    "PluginConfig",
    "ResumePoint",
    "Run",
    "RunConfig",
    "RunConfigConflictError",
    "RunConfigNotFoundError",
    "RunConfigStore",
    "Start",
    "StartConfig",
    "StartReport",
    "SyntheticDataSplitConfig",
    "Task",
    "TaskConfig",
    "Trainer",
    "TrainerConfig",
    "TrainingStats",
    "UNetConfig",
    "ValidationScores",
    "create_run_config_store",
    "evaluate",
    "register",
    "resume_run",
    "train_run",
    "validate_run",
]
