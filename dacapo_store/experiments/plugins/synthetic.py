"""Built-in datasplit ``synthetic``: seeded noisy volumes of random disks (2D) or balls (3D)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..configs import ConfigError, DataSplitConfig
from ..interfaces import DataSplit
from ..registry import register
from .arrays import ArrayDataset


@register("datasplit", "synthetic")
@dataclass(frozen=True, kw_only=True)
class SyntheticDataSplitConfig(DataSplitConfig):
    """``num_train`` training and ``num_validate`` validation volumes (``train_0``, ...,
    ``validate_0``, ...), each of ``shape`` with ``num_objects`` random disks/balls of radius
    in ``radius`` (inclusive range). Ground truth is the objects' union; raw is the ground truth
    plus Gaussian noise of standard deviation ``noise``. Volume ``i`` depends only on
    ``seed`` and ``i``.
    """

    shape: tuple[int, ...] = (128, 128)
    num_train: int = 2
    num_validate: int = 2
    num_objects: int = 24
    radius: tuple[int, int] = (4, 10)
    noise: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if len(self.shape) not in (2, 3) or min(self.shape) < 1:
            raise ConfigError(f"shape must be 2 or 3 positive sizes, got {list(self.shape)}")
        if self.num_train < 1 or self.num_validate < 0 or self.num_objects < 0:
            raise ConfigError("num_train must be >= 1, num_validate and num_objects >= 0")
        if not 1 <= self.radius[0] <= self.radius[1]:
            raise ConfigError(f"radius must be [min, max] with 1 <= min <= max, got {list(self.radius)}")
        if self.noise < 0:
            raise ConfigError(f"noise must be >= 0, got {self.noise}")

    def build(self) -> DataSplit:
        """The datasplit; each volume is generated (from ``seed`` and its index, so always the
        same) on first access, not here."""

        def dataset(name: str, index: int) -> ArrayDataset:
            return ArrayDataset(name, lambda: self.volume(index))

        return DataSplit(
            train=[dataset(f"train_{i}", i) for i in range(self.num_train)],
            validate=[dataset(f"validate_{i}", self.num_train + i) for i in range(self.num_validate)],
        )

    def volume(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(raw float32, gt uint8)`` of volume ``index``."""
        rng = np.random.default_rng([self.seed, index])
        grid = np.indices(self.shape, dtype=np.float32)
        gt = np.zeros(self.shape, dtype=bool)
        for _ in range(self.num_objects):
            center = rng.uniform(0, self.shape)
            radius = rng.integers(self.radius[0], self.radius[1], endpoint=True)
            squared = sum((axis - c) ** 2 for axis, c in zip(grid, center))
            gt |= squared <= radius**2
        raw = gt.astype(np.float32) + rng.normal(0.0, self.noise, self.shape).astype(np.float32)
        return raw, gt.astype(np.uint8)
