"""Built-in datasplit ``npy``: volumes a user has, as NumPy ``.npy`` files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..configs import Config, ConfigError, DataSplitConfig
from ..interfaces import DataSplit
from ..registry import register
from .arrays import ArrayDataset


@dataclass(frozen=True, kw_only=True)
class NpyDatasetConfig(Config):
    """One volume: ``raw`` (``spatial`` or ``(channels, *spatial)``) and ``gt`` (``spatial``,
    foreground > 0) ``.npy`` files. Relative paths are relative to the working directory."""

    name: str
    raw: str
    gt: str

    def check(self) -> None:
        if not self.name:
            raise ConfigError("dataset name must not be empty")

    def build(self) -> ArrayDataset:
        """The dataset; the files are memory-mapped on first access.

        Raises (on first access):
            FileNotFoundError / ValueError: a missing or unreadable file, or misfit shapes.
        """
        return ArrayDataset(self.name, lambda: (_load(self.raw), _load(self.gt)))


@register("datasplit", "npy")
@dataclass(frozen=True, kw_only=True)
class NpyDataSplitConfig(DataSplitConfig):
    """Training and validation volumes read from ``.npy`` files (see :class:`NpyDatasetConfig`)."""

    train: tuple[NpyDatasetConfig, ...]
    validate: tuple[NpyDatasetConfig, ...] = ()

    def check(self) -> None:
        if not self.train:
            raise ConfigError("train must list at least one dataset")

    def build(self) -> DataSplit:
        """The datasplit; no file is opened here (see :meth:`NpyDatasetConfig.build`)."""
        return DataSplit(
            train=[dataset.build() for dataset in self.train],
            validate=[dataset.build() for dataset in self.validate],
        )


def _load(path: str) -> np.ndarray:
    return np.load(Path(path).expanduser(), mmap_mode="r", allow_pickle=False)
