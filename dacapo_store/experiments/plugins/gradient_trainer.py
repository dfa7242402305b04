"""Built-in trainer ``gradient``: Adam or RAdam on random crops, drawn deterministically."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ...records import TrainingIterationStats
from ..configs import ConfigError, TrainerConfig
from ..interfaces import Dataset, Task, Trainer
from ..registry import register

OPTIMIZERS = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}


@register("trainer", "gradient")
@dataclass(frozen=True, kw_only=True)
class GradientTrainerConfig(TrainerConfig):
    """Each iteration draws ``batch_size`` crops of ``input_shape`` (random dataset, position
    and, with ``augment``, axis flips) and takes one ``optimizer`` step. ``seed`` decides the
    model's initial weights and every batch."""

    optimizer: Literal["adam", "radam"] = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 4
    input_shape: tuple[int, ...] = (64, 64)
    augment: bool = True
    seed: int = 0

    def check(self) -> None:
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if len(self.input_shape) not in (2, 3) or min(self.input_shape) < 1:
            raise ConfigError(f"input_shape must be 2 or 3 positive sizes, got {list(self.input_shape)}")

    def build(self) -> "GradientTrainer":
        return GradientTrainer(self)


class GradientTrainer(Trainer):
    """The trainer of a :class:`GradientTrainerConfig`."""

    def __init__(self, config: GradientTrainerConfig) -> None:
        self.config = config
        self.seed = config.seed

    def create_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return OPTIMIZERS[self.config.optimizer](model.parameters(), lr=self.config.learning_rate)

    def iterate(
        self,
        iterations: range,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        task: Task,
        datasets: Sequence[Dataset],
        device: torch.device,
    ) -> Iterator[TrainingIterationStats]:
        model.train()
        for iteration in iterations:
            started = time.perf_counter()
            raw, gt = self.batch(iteration, datasets)
            optimizer.zero_grad(set_to_none=True)
            prediction = model(torch.from_numpy(raw).to(device))
            loss = task.loss(prediction, task.create_target(torch.from_numpy(gt).to(device)))
            loss.backward()
            optimizer.step()
            yield TrainingIterationStats(iteration, loss.item(), time.perf_counter() - started)

    def batch(self, iteration: int, datasets: Sequence[Dataset]) -> tuple[np.ndarray, np.ndarray]:
        """The batch of ``iteration``: ``(raw (batch, channels, *input_shape), gt (batch, *input_shape))``.

        Raises:
            ValueError: a dataset is smaller than ``input_shape`` or of another dimensionality.
        """
        rng = np.random.default_rng([self.seed, iteration])
        raws, gts = [], []
        for _ in range(self.config.batch_size):
            dataset = datasets[rng.integers(len(datasets))]
            raw, gt = self._crop(dataset, rng)
            if self.config.augment:
                for axis in range(gt.ndim):
                    if rng.random() < 0.5:
                        raw, gt = np.flip(raw, axis + 1), np.flip(gt, axis)
            raws.append(raw)
            gts.append(gt)
        return np.ascontiguousarray(np.stack(raws)), np.ascontiguousarray(np.stack(gts))

    def _crop(self, dataset: Dataset, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        shape = self.config.input_shape
        spatial = dataset.gt.shape
        if len(spatial) != len(shape) or any(s < c for s, c in zip(spatial, shape)):
            raise ValueError(
                f"dataset {dataset.name!r} of shape {spatial} cannot give crops of input_shape {list(shape)}"
            )
        corner = [int(rng.integers(s - c + 1)) for s, c in zip(spatial, shape)]
        window = tuple(slice(o, o + c) for o, c in zip(corner, shape))
        return dataset.raw[(slice(None), *window)], dataset.gt[window]
