"""``Run``: a run config turned into live objects (task, model, optimizer, data, statistics)."""

from __future__ import annotations

import torch

from ..config import create_weights_store
from ..weights_store import WeightsStore
from .interfaces import StartReport
from .run_config import RunConfig
from .training_stats import TrainingStats
from .validation_scores import ValidationScores


class Run:
    """Everything needed to train and validate one run, built from its :class:`RunConfig`.

    The model's initial weights are drawn from the trainer's seed (the global torch RNG is left
    untouched). With a ``start_config`` and ``load_starter_model``, the model is then
    initialised from the starter checkpoint, read from ``weights_store`` (default: the store
    :func:`~dacapo_store.create_weights_store` designates); ``start_report`` says what was loaded.
    ``training_stats`` and ``validation_scores`` start empty: training fills them from the store.

    Raises:
        ConfigError: a plug-in config cannot be built.
        NoScoreError / CheckpointNotFoundError: the starter checkpoint does not exist.
    """

    def __init__(
        self,
        run_config: RunConfig,
        load_starter_model: bool = True,
        *,
        weights_store: WeightsStore | None = None,
    ) -> None:
        self.config = run_config
        self.name = run_config.name
        self.train_until = run_config.num_iterations
        self.validation_interval = run_config.validation_interval

        self.task = run_config.task_config.build()
        self.trainer = run_config.trainer_config.build()
        self.datasplit = run_config.datasplit_config.build()

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.trainer.seed)
            self.architecture = run_config.architecture_config.build()
            self.model = self.task.create_model(self.architecture)
        self.optimizer = self.trainer.create_optimizer(self.model)

        self.training_stats = TrainingStats()
        self.validation_scores = Run.get_validation_scores(run_config)

        self.start = run_config.start_config.build() if run_config.start_config is not None else None
        self.start_report: StartReport | None = None
        if self.start is not None and load_starter_model:
            store = weights_store if weights_store is not None else create_weights_store()
            self.start_report = self.start.initialize_weights(self.model, store)

    def __repr__(self) -> str:
        return f"Run({self.name!r}, train_until={self.train_until})"

    @staticmethod
    def get_validation_scores(run_config: RunConfig) -> ValidationScores:
        """An empty :class:`ValidationScores` for the run, built from its task and datasplit
        configs only (no model, optimizer or trainer; no data is loaded)."""
        task = run_config.task_config.build()
        datasplit = run_config.datasplit_config.build()
        return ValidationScores(task.parameters, [dataset.name for dataset in datasplit.validate], task.criteria)

    def move_optimizer(self, device: torch.device | str, empty_cuda_cache: bool = False) -> None:
        """Move every tensor of the optimizer's state to ``device``; optionally empty the CUDA
        cache afterwards (to release the memory the old copies held)."""
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value):
                    state[key] = value.to(device)
        if empty_cuda_cache and torch.cuda.is_available():
            torch.cuda.empty_cache()
