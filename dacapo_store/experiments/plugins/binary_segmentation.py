"""Built-in task ``binary_segmentation``: foreground probability, thresholded and scored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..configs import ConfigError, TaskConfig
from ..interfaces import Architecture, Task
from ..model import Model
from ..registry import register
from .metrics import confusion, f1_score, iou, variation_of_information

CRITERIA = {"f1_score": True, "iou": True, "voi": False}
"""Criterion -> higher is better."""


@register("task", "binary_segmentation")
@dataclass(frozen=True, kw_only=True)
class BinarySegmentationConfig(TaskConfig):
    """Predict foreground (ground truth > 0) with a binary cross-entropy loss; validation
    thresholds the foreground probability at each of ``thresholds`` and scores f1_score and
    iou (higher is better) and voi (variation of information, lower is better).

    ``pos_weight`` weighs foreground voxels in the loss (> 1 favours recall).
    """

    thresholds: tuple[float, ...] = (0.3, 0.5, 0.7)
    pos_weight: float = 1.0

    def check(self) -> None:
        if not self.thresholds:
            raise ConfigError("thresholds must not be empty")
        if any(not 0.0 < t < 1.0 for t in self.thresholds):
            raise ConfigError(f"thresholds must lie strictly between 0 and 1, got {list(self.thresholds)}")
        if len(set(self.thresholds)) != len(self.thresholds):
            raise ConfigError(f"thresholds must be distinct, got {list(self.thresholds)}")
        if self.pos_weight <= 0:
            raise ConfigError(f"pos_weight must be > 0, got {self.pos_weight}")

    def build(self) -> "BinarySegmentationTask":
        return BinarySegmentationTask(self)


class BinarySegmentationTask(Task):
    """The task of a :class:`BinarySegmentationConfig`."""

    def __init__(self, config: BinarySegmentationConfig) -> None:
        self.config = config

    def create_model(self, architecture: Architecture) -> Model:
        return Model(architecture, out_channels=1)

    def create_target(self, gt: torch.Tensor) -> torch.Tensor:
        return (gt > 0).float().unsqueeze(1)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pos_weight = torch.tensor(self.config.pos_weight, device=prediction.device)
        return F.binary_cross_entropy_with_logits(prediction, target, pos_weight=pos_weight)

    @property
    def parameters(self) -> list[dict[str, Any]]:
        return [{"threshold": threshold} for threshold in self.config.thresholds]

    @property
    def criteria(self) -> dict[str, bool]:
        return dict(CRITERIA)

    def predict(self, model: torch.nn.Module, raw: torch.Tensor) -> np.ndarray:
        """The foreground probability of every voxel, shape ``raw.shape[1:]``."""
        with torch.no_grad():
            logits = model(raw.unsqueeze(0))
        return torch.sigmoid(logits)[0, 0].cpu().numpy()

    def evaluate(
        self, prediction: np.ndarray, gt: np.ndarray, parameters: Mapping[str, Any]
    ) -> dict[str, float]:
        tp, fp, fn, tn = confusion(prediction >= parameters["threshold"], gt > 0)
        return {
            "f1_score": f1_score(tp, fp, fn),
            "iou": iou(tp, fp, fn),
            "voi": variation_of_information(tp, fp, fn, tn),
        }
