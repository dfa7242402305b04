"""Run: building a run from its config, moving its optimizer, starting from another run."""

from __future__ import annotations

import logging

import pytest
import torch

from dacapo_store import CheckpointNotFoundError, NoScoreError
from dacapo_store.experiments import CheckpointStartConfig, Run, TrainingStats, UNetConfig, train_run
from dacapo_store.experiments.interfaces import Architecture, DataSplit, Task, Trainer

from .conftest import tiny_config


def test_run_builds_everything_from_its_config():
    config = tiny_config()
    run = Run(config)
    assert run.name == "tiny" and run.config is config
    assert run.train_until == 6 and run.validation_interval == 2
    assert isinstance(run.task, Task) and isinstance(run.architecture, Architecture)
    assert isinstance(run.trainer, Trainer) and isinstance(run.datasplit, DataSplit)
    assert isinstance(run.model, torch.nn.Module) and isinstance(run.optimizer, torch.optim.Adam)
    assert run.model.architecture is run.architecture
    assert isinstance(run.training_stats, TrainingStats) and run.training_stats.trained_until() == 0
    assert run.validation_scores.datasets == ["validate_0", "validate_1"]
    assert run.start is None and run.start_report is None


def test_initial_weights_come_from_the_trainer_seed_only():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first, second = Run(tiny_config()), Run(tiny_config())
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched
    reseeded = Run(tiny_config(trainer_config={"type": "gradient", "input_shape": [16, 16], "seed": 1}))
    for key, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[key])
    assert any(
        not torch.equal(tensor, reseeded.model.state_dict()[key]) for key, tensor in first.model.state_dict().items()
    )


def test_move_optimizer_moves_every_state_tensor():
    run = Run(tiny_config())
    run.model(torch.zeros(1, 1, 8, 8)).sum().backward()
    run.optimizer.step()
    moved = []
    for state in run.optimizer.state.values():
        for key, value in state.items():
            state[key] = value.to(torch.float64)  # something to move back
            moved.append(key)
    assert set(moved) == {"step", "exp_avg", "exp_avg_sq"}
    run.move_optimizer(torch.device("meta"))
    assert all(
        value.device.type == "meta" for state in run.optimizer.state.values() for value in state.values()
    )


@pytest.fixture
def starter(weights_store, stats_store):
    """A trained run 'starter' with checkpoints 2, 4, 6 and their scores."""
    run = Run(tiny_config("starter"))
    train_run(run, weights_store, stats_store, progress=False)
    return run


def test_start_by_iteration_loads_the_model_only(weights_store, starter):
    config = tiny_config("started", start_config=CheckpointStartConfig(run="starter", iteration=4))
    run = Run(config, weights_store=weights_store)
    starter_model = weights_store.retrieve_weights("starter", 4).model
    for key, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, starter_model[key])
    assert run.optimizer.state_dict()["state"] == {}  # the optimizer starts fresh
    report = run.start_report
    assert (report.run, report.iteration, report.skipped, report.missing) == ("starter", 4, {}, [])
    assert set(report.loaded) == set(starter_model)


def test_start_from_best_with_a_new_head_reports_skipped_keys(weights_store, starter, caplog):
    best = starter.validation_scores.get_best("validate_1", "voi").iteration
    config = tiny_config(
        "new_head",
        architecture_config=UNetConfig(num_fmaps=2, depth=2, num_fmaps_out=3),
        start_config=CheckpointStartConfig(run="starter", dataset="validate_1", criterion="voi"),
    )
    with caplog.at_level(logging.WARNING):
        run = Run(config, weights_store=weights_store)
    report = run.start_report
    assert report.iteration == best
    assert "head.weight" in report.skipped
    assert report.skipped["head.weight"] == "checkpoint shape (1, 2, 1, 1) vs model shape (1, 3, 1, 1)"
    starter_model = weights_store.retrieve_weights("starter", best).model
    assert "architecture.encoder.0.0.weight" in report.loaded
    assert torch.equal(run.model.state_dict()["architecture.encoder.0.0.weight"], starter_model["architecture.encoder.0.0.weight"])
    assert "skipped" in caplog.text and "head.weight" in caplog.text


def test_start_is_not_loaded_when_asked_not_to(weights_store):
    config = tiny_config("lazy", start_config=CheckpointStartConfig(run="missing", iteration=2))
    run = Run(config, load_starter_model=False, weights_store=weights_store)
    assert run.start is not None and run.start_report is None


def test_missing_starter_is_an_error(weights_store):
    with pytest.raises(CheckpointNotFoundError):
        Run(tiny_config("a", start_config=CheckpointStartConfig(run="missing", iteration=2)), weights_store=weights_store)
    by_best = CheckpointStartConfig(run="missing", dataset="validate_0", criterion="iou")
    with pytest.raises(NoScoreError):
        Run(tiny_config("b", start_config=by_best), weights_store=weights_store)
