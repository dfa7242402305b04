"""Built-in start ``checkpoint``: initialise a model from another run's stored checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ...weights_store import WeightsStore
from ..configs import ConfigError, StartConfig
from ..interfaces import Start, StartReport
from ..registry import register

logger = logging.getLogger(__name__)


@register("start", "checkpoint")
@dataclass(frozen=True, kw_only=True)
class CheckpointStartConfig(StartConfig):
    """Start from run ``run``'s checkpoint ``iteration``, or from its best checkpoint on
    ``(dataset, criterion)``: give either ``iteration`` or both ``dataset`` and ``criterion``."""

    run: str
    iteration: int | None = None
    dataset: str | None = None
    criterion: str | None = None

    def check(self) -> None:
        """Besides ranges, a cross-field rule: exactly one of ``iteration`` or the pair
        ``dataset`` + ``criterion`` must be given. The named run is not looked up here."""
        if not self.run:
            raise ConfigError("run must name the run to start from")
        half_best = (self.dataset is None) != (self.criterion is None)
        by_best = self.dataset is not None and self.criterion is not None
        if half_best or by_best == (self.iteration is not None):
            raise ConfigError("give either iteration, or both dataset and criterion (not both ways)")
        if self.iteration is not None and self.iteration < 0:
            raise ConfigError(f"iteration must be >= 0, got {self.iteration}")

    def build(self) -> "CheckpointStart":
        """The start; it reads no store: the checkpoint is found and loaded only by
        :meth:`CheckpointStart.initialize_weights` (raising what the weights store raises)."""
        return CheckpointStart(self)


class CheckpointStart(Start):
    """The start of a :class:`CheckpointStartConfig`: loads the model part only."""

    def __init__(self, config: CheckpointStartConfig) -> None:
        self.config = config

    def starter_iteration(self, weights_store: WeightsStore) -> int:
        """The checkpoint to start from (raises NoScoreError if chosen by best and unscored)."""
        config = self.config
        if config.iteration is not None:
            return config.iteration
        return weights_store.retrieve_best(config.run, config.dataset, config.criterion)

    def initialize_weights(self, model: torch.nn.Module, weights_store: WeightsStore) -> StartReport:
        iteration = self.starter_iteration(weights_store)
        starter = weights_store.retrieve_weights(self.config.run, iteration, optimizer=False).model
        report = load_matching(model, starter, self.config.run, iteration)
        logger.info(
            "initialised the model from checkpoint %d of run %r: %d tensors loaded",
            iteration,
            self.config.run,
            len(report.loaded),
        )
        if report.skipped or report.missing:
            logger.warning(
                "starter checkpoint %d of run %r: skipped %s; not in the checkpoint (left as "
                "initialised) %s",
                iteration,
                self.config.run,
                report.skipped,
                report.missing,
            )
        return report


def load_matching(
    model: torch.nn.Module, starter: Mapping[str, torch.Tensor], run: str, iteration: int
) -> StartReport:
    """Load the tensors of ``starter`` whose key and shape match ``model``'s; report the rest."""
    own = model.state_dict()
    loaded, skipped = [], {}
    for key, tensor in starter.items():
        if key not in own:
            skipped[key] = "not in the model"
        elif tuple(tensor.shape) != tuple(own[key].shape):
            skipped[key] = f"checkpoint shape {tuple(tensor.shape)} vs model shape {tuple(own[key].shape)}"
        else:
            loaded.append(key)
    model.load_state_dict({key: starter[key] for key in loaded}, strict=False)
    missing = [key for key in own if key not in starter]
    return StartReport(run=run, iteration=iteration, loaded=loaded, skipped=skipped, missing=missing)
