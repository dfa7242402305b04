"""Fixtures for the experiment tests: stores of every backend (with their run config store),
tiny run configs that train in milliseconds, and a way to interrupt training."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from dacapo_store import LocalWeightsStore
from dacapo_store.experiments import (
    BinarySegmentationConfig,
    GradientTrainerConfig,
    LocalRunConfigStore,
    MongoRunConfigStore,
    RunConfig,
    RunConfigStore,
    SyntheticDataSplitConfig,
    UNetConfig,
)
from dacapo_store.experiments.plugins.gradient_trainer import GradientTrainer


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread, and two threads fight other work for 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_config_store(weights_store) -> RunConfigStore:
    """The run config store sharing the backend of ``weights_store`` / ``stats_store``."""
    if isinstance(weights_store, LocalWeightsStore):
        return LocalRunConfigStore(weights_store.basedir)
    database = weights_store.database
    return MongoRunConfigStore(database.client, database.db_name)


def tiny_config(name: str = "tiny", **changes: Any) -> RunConfig:
    """A run that trains in milliseconds: 6 iterations, a checkpoint every 2, two validation
    datasets and two thresholds. ``changes`` replace RunConfig fields."""
    config = RunConfig(
        name=name,
        task_config=BinarySegmentationConfig(thresholds=(0.3, 0.7)),
        architecture_config=UNetConfig(num_fmaps=2, depth=2),
        trainer_config=GradientTrainerConfig(batch_size=1, input_shape=(16, 16), learning_rate=1e-2),
        datasplit_config=SyntheticDataSplitConfig(
            shape=(24, 24), num_train=1, num_validate=2, num_objects=3, radius=(2, 5)
        ),
        num_iterations=6,
        validation_interval=2,
    )
    return dataclasses.replace(config, **changes)


class Interrupted(Exception):
    """Raised by :func:`interrupt_at` to simulate a killed training process."""


@pytest.fixture
def interrupt_at(monkeypatch) -> Iterator[Any]:
    """``interrupt_at(k)``: training raises :class:`Interrupted` when it reaches iteration ``k``
    (iterations before ``k`` complete, ``k`` never runs); ``interrupt_at(None)`` lifts it."""
    original = GradientTrainer.iterate
    stop: dict[str, int | None] = {"at": None}

    def iterate(self, iterations, *args, **kwargs):
        for stats in original(self, iterations, *args, **kwargs):
            yield stats
            if stop["at"] is not None and stats.iteration + 1 >= stop["at"]:
                raise Interrupted(f"interrupted at iteration {stop['at']}")

    monkeypatch.setattr(GradientTrainer, "iterate", iterate)

    def set_stop(iteration: int | None) -> None:
        stop["at"] = iteration

    yield set_stop
