"""The contracts a plug-in implements: what a :class:`~.run.Run` builds from its configs.

Each plug-in config's ``build()`` returns one of these. Arrays are NumPy arrays with a leading
channel axis for raw data (``(channels, *spatial)``) and none for ground truth (``spatial``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..records import TrainingIterationStats
from ..weights_store import WeightsStore


class Architecture(torch.nn.Module):
    """A network body: maps ``(batch, in_channels, *spatial)`` to ``(batch, out_channels, *spatial)``.

    Subclasses set the four attributes below. Inputs whose spatial sizes are multiples of
    ``downsample_factor`` keep their size.
    """

    dims: int
    in_channels: int
    out_channels: int
    downsample_factor: int


class Dataset(ABC):
    """A named volume: raw data and its ground truth (both loaded on first use)."""

    name: str

    @property
    @abstractmethod
    def raw(self) -> np.ndarray:
        """Raw data, ``float32`` of shape ``(channels, *spatial)``."""

    @property
    @abstractmethod
    def gt(self) -> np.ndarray:
        """Ground truth of shape ``spatial``."""


@dataclass(frozen=True)
class DataSplit:
    """The datasets a run trains on and validates on (validation names must be unique)."""

    train: Sequence[Dataset]
    validate: Sequence[Dataset]

    def __post_init__(self) -> None:
        names = [dataset.name for dataset in self.validate]
        if len(set(names)) != len(names):
            raise ValueError(f"validation dataset names must be unique, got {names}")
        if not self.train:
            raise ValueError("a datasplit needs at least one training dataset")


class Task(ABC):
    """What the model predicts, how it is trained (loss) and how predictions are scored."""

    @abstractmethod
    def create_model(self, architecture: Architecture) -> torch.nn.Module:
        """Return the trainable model: ``architecture`` plus the task's prediction head."""

    @abstractmethod
    def create_target(self, gt: torch.Tensor) -> torch.Tensor:
        """Return the training target for a batch of ground truth ``(batch, *spatial)``."""

    @abstractmethod
    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar training loss of a model output against its target."""

    @property
    @abstractmethod
    def parameters(self) -> list[dict[str, Any]]:
        """The post-processing parameter sets validation tries (JSON-able mappings)."""

    @property
    @abstractmethod
    def criteria(self) -> dict[str, bool]:
        """Evaluation criterion name -> whether a higher score is better."""

    @abstractmethod
    def predict(self, model: torch.nn.Module, raw: torch.Tensor) -> np.ndarray:
        """Return the model's prediction for one whole volume ``(channels, *spatial)``."""

    @abstractmethod
    def evaluate(
        self, prediction: np.ndarray, gt: np.ndarray, parameters: Mapping[str, Any]
    ) -> dict[str, float]:
        """Post-process ``prediction`` with ``parameters`` and score it against ``gt``:
        returns one value per criterion of :attr:`criteria`."""


class Trainer(ABC):
    """Builds the optimizer and runs training iterations (drawing batches deterministically).

    ``seed`` also seeds the initial weights of a run's model (see :class:`~.run.Run`).
    """

    seed: int

    @abstractmethod
    def create_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """Return a new optimizer over ``model``'s parameters."""

    @abstractmethod
    def iterate(
        self,
        iterations: range,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        task: Task,
        datasets: Sequence[Dataset],
        device: torch.device,
    ) -> Iterator[TrainingIterationStats]:
        """Train one step per iteration of ``iterations``, yielding each step's stats.

        The batch of iteration ``i`` depends only on the trainer's seed and ``i``, so a resumed
        run draws the same batches as an uninterrupted one.
        """


@dataclass(frozen=True)
class StartReport:
    """What a :class:`Start` loaded: the checkpoint it came from, the model keys it loaded,
    the keys it skipped (``key -> "checkpoint shape vs model shape"``, or absent from the
    model) and the model keys the checkpoint did not have."""

    run: str
    iteration: int
    loaded: list[str]
    skipped: dict[str, str]
    missing: list[str]


class Start(ABC):
    """Initialises a new run's model (never its optimizer) from a stored checkpoint."""

    @abstractmethod
    def initialize_weights(self, model: torch.nn.Module, weights_store: WeightsStore) -> StartReport:
        """Load the starter weights that fit into ``model`` and report what was skipped.

        Raises:
            NoScoreError / CheckpointNotFoundError: the starter checkpoint does not exist.
        """
