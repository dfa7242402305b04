"""A dataset whose raw data and ground truth come from a loader function, called once."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ..interfaces import Dataset

Loader = Callable[[], tuple[np.ndarray, np.ndarray]]


class ArrayDataset(Dataset):
    """A named volume; ``load()`` returns ``(raw, gt)`` on first access.

    ``raw`` may lack the channel axis (same ndim as ``gt``): one is added.

    Raises (on first access):
        ValueError: raw and ground-truth shapes do not fit together.
    """

    def __init__(self, name: str, load: Loader) -> None:
        self.name = name
        self._load = load

    def __repr__(self) -> str:
        return f"ArrayDataset({self.name!r})"

    @property
    def raw(self) -> np.ndarray:
        return self._arrays[0]

    @property
    def gt(self) -> np.ndarray:
        return self._arrays[1]

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        raw, gt = self._load()
        raw = np.asarray(raw, dtype=np.float32)
        gt = np.asarray(gt)
        if raw.ndim == gt.ndim:
            raw = raw[np.newaxis]
        if raw.ndim != gt.ndim + 1 or raw.shape[1:] != gt.shape:
            raise ValueError(
                f"dataset {self.name!r}: raw shape {raw.shape} does not fit ground truth shape "
                f"{gt.shape} (expected raw (channels, *spatial) or spatial)"
            )
        return raw, gt
