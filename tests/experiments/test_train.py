"""train_run and validate_run: checkpoints, scores, stats, and every resume case."""

from __future__ import annotations

import logging

import pytest
import torch

from dacapo_store.experiments import Run, resume_run, train_run, validate_run
from dacapo_store.maintenance.retention import RetentionPolicy

from .conftest import Interrupted, tiny_config

NUM_SCORES_PER_CHECKPOINT = 2 * 2 * 3  # datasets x thresholds x criteria of tiny_config


def train(config, weights_store, stats_store):
    """Train a fresh Run of ``config`` (as a new process would) and return it."""
    run = Run(config)
    train_run(run, weights_store, stats_store, progress=False)
    return run


def assert_complete(run_name, weights_store, stats_store, checkpoints=(2, 4, 6), trained_until=6):
    """The stores hold exactly ``checkpoints``, each with every score, and stats 0..trained_until-1."""
    assert [c.iteration for c in weights_store.list_checkpoints(run_name)] == list(checkpoints)
    scores = stats_store.retrieve_validation_scores(run_name)
    assert sorted({s.iteration for s in scores}) == list(checkpoints)
    for checkpoint in checkpoints:
        assert len([s for s in scores if s.iteration == checkpoint]) == NUM_SCORES_PER_CHECKPOINT
    stats = stats_store.retrieve_training_stats(run_name)
    assert [s.iteration for s in stats] == list(range(trained_until))


def assert_same_state(state, other):
    """Two state dicts (model or optimizer) hold equal tensors and values."""
    if isinstance(state, torch.Tensor):
        assert torch.equal(state, other)
    elif isinstance(state, dict):
        assert state.keys() == other.keys()
        for key in state:
            assert_same_state(state[key], other[key])
    elif isinstance(state, list):
        assert len(state) == len(other)
        for item, other_item in zip(state, other):
            assert_same_state(item, other_item)
    else:
        assert state == other


def test_train_run_checkpoints_validates_and_stores_stats(weights_store, stats_store):
    run = train(tiny_config(num_iterations=7, validation_interval=3), weights_store, stats_store)
    assert_complete("tiny", weights_store, stats_store, checkpoints=(3, 6, 7), trained_until=7)
    assert run.training_stats.trained_until() == 7
    assert run.validation_scores.iterations == [3, 6, 7]
    assert all(run.validation_scores.is_complete(i) for i in (3, 6, 7))
    final = weights_store.retrieve_weights("tiny", 7)
    assert_same_state(run.model.state_dict(), final.model)
    assert_same_state(run.optimizer.state_dict(), final.optimizer)
    best = run.validation_scores.get_best("validate_0", "f1_score")
    assert best.iteration == weights_store.retrieve_best("tiny", "validate_0", "f1_score")


def test_validate_run_scores_the_stored_checkpoint_not_the_live_model(weights_store, stats_store):
    run = train(tiny_config(), weights_store, stats_store)
    live = {key: tensor.clone() for key, tensor in run.model.state_dict().items()}
    evaluations = validate_run(run, 2, weights_store)
    assert_same_state(run.model.state_dict(), live)  # run.model untouched
    stored = {
        (s.dataset, s.parameters["threshold"], s.criterion): s.value
        for s in stats_store.retrieve_validation_scores("tiny")
        if s.iteration == 2
    }
    assert len(evaluations) == 4
    for evaluation in evaluations:
        for criterion, value in evaluation.scores.items():
            assert value == pytest.approx(stored[(evaluation.dataset, evaluation.parameters["threshold"], criterion)])


def test_a_resumed_run_continues_exactly_where_it_stopped(weights_store, stats_store, interrupt_at):
    uninterrupted = train(tiny_config("whole"), weights_store, stats_store)
    interrupt_at(5)  # killed during iteration 5: checkpoint 4 is stored
    with pytest.raises(Interrupted):
        train(tiny_config("resumed"), weights_store, stats_store)
    assert weights_store.latest_iteration("resumed") == 4
    interrupt_at(None)
    resumed = train(tiny_config("resumed"), weights_store, stats_store)
    assert_same_state(resumed.model.state_dict(), uninterrupted.model.state_dict())
    assert_same_state(resumed.optimizer.state_dict(), uninterrupted.optimizer.state_dict())
    assert_complete("resumed", weights_store, stats_store)
    for whole, part in zip(
        stats_store.retrieve_training_stats("whole"), stats_store.retrieve_training_stats("resumed")
    ):
        assert whole.loss == part.loss


def test_resume_new_run_starts_from_zero(weights_store, stats_store):
    run = Run(tiny_config())
    point = resume_run(run, weights_store, stats_store)
    assert (point.iteration, point.case) == (0, "new")


def test_resume_without_weights_restarts_from_zero(weights_store, stats_store, caplog):
    train(tiny_config(), weights_store, stats_store)
    for checkpoint in (2, 4, 6):
        weights_store.remove("tiny", checkpoint)
    run = Run(tiny_config())
    with caplog.at_level(logging.WARNING):
        point = resume_run(run, weights_store, stats_store)
    assert (point.iteration, point.case, point.trained_until) == (0, "no_weights", 6)
    assert "no stored weights" in caplog.text
    assert stats_store.retrieve_training_stats("tiny") == []
    assert stats_store.retrieve_validation_scores("tiny") == []
    assert run.training_stats.trained_until() == 0 and run.validation_scores.iterations == []
    train_run(run, weights_store, stats_store, progress=False)
    assert_complete("tiny", weights_store, stats_store)


def test_resume_with_weights_behind_stats_truncates_stats_and_scores(weights_store, stats_store, caplog):
    train(tiny_config(), weights_store, stats_store)
    weights_store.remove("tiny", 6)  # as if killed after storing stats 4..5 but not weights 6
    run = Run(tiny_config())
    with caplog.at_level(logging.WARNING):
        point = resume_run(run, weights_store, stats_store)
    assert (point.iteration, point.case, point.trained_until) == (4, "weights_behind", 6)
    assert "latest weights are of iteration 4" in caplog.text
    assert [s.iteration for s in stats_store.retrieve_training_stats("tiny")] == [0, 1, 2, 3]
    assert {s.iteration for s in stats_store.retrieve_validation_scores("tiny")} == {2, 4}  # 4 kept
    assert run.training_stats.trained_until() == 4
    assert run.validation_scores.iterations == [2, 4]
    assert_same_state(run.model.state_dict(), weights_store.retrieve_weights("tiny", 4).model)
    train_run(run, weights_store, stats_store, progress=False)
    assert_complete("tiny", weights_store, stats_store)


def test_resume_with_weights_equal_to_stats_loads_model_and_optimizer(weights_store, stats_store, interrupt_at):
    interrupt_at(5)
    with pytest.raises(Interrupted):
        train(tiny_config(), weights_store, stats_store)
    run = Run(tiny_config())
    point = resume_run(run, weights_store, stats_store)
    assert (point.iteration, point.case) == (4, "equal")
    stored = weights_store.retrieve_weights("tiny", 4)
    assert_same_state(run.model.state_dict(), stored.model)
    assert_same_state(run.optimizer.state_dict(), stored.optimizer)
    assert run.optimizer.state_dict()["state"]  # Adam moments restored, not a fresh optimizer
    assert run.validation_scores.iterations == [2, 4]


def test_resume_with_weights_ahead_of_stats_loads_and_warns(weights_store, stats_store, caplog):
    train(tiny_config(), weights_store, stats_store)
    stats_store.delete_training_stats("tiny", after=3)  # stats of iterations 4, 5 lost
    run = Run(tiny_config())
    with caplog.at_level(logging.WARNING):
        point = resume_run(run, weights_store, stats_store)
    assert (point.iteration, point.case, point.trained_until) == (6, "weights_ahead", 4)
    assert "training stats of iterations 4..5 are missing" in caplog.text
    assert_same_state(run.model.state_dict(), weights_store.retrieve_weights("tiny", 6).model)
    longer = Run(tiny_config(num_iterations=8))  # weights ahead and more to train
    train_run(longer, weights_store, stats_store, progress=False)
    assert [s.iteration for s in stats_store.retrieve_training_stats("tiny")] == [0, 1, 2, 3, 6, 7]
    assert longer.training_stats.trained_until() == 8


@pytest.mark.parametrize("stored_before_kill", [0, 1], ids=["no-score", "one-dataset-scored"])
def test_run_killed_between_weights_and_scores_loses_no_score(
    weights_store, stats_store, monkeypatch, stored_before_kill
):
    original = type(stats_store).store_validation_scores
    calls = {"at_4": 0}

    def killed_while_scoring_4(self, run, iteration, *args, **kwargs):
        if iteration == 4:
            if calls["at_4"] >= stored_before_kill * 2:  # 2 thresholds per dataset
                raise Interrupted("killed after storing weights 4, before all its scores")
            calls["at_4"] += 1
        return original(self, run, iteration, *args, **kwargs)

    monkeypatch.setattr(type(stats_store), "store_validation_scores", killed_while_scoring_4)
    with pytest.raises(Interrupted):
        train(tiny_config(), weights_store, stats_store)
    assert weights_store.latest_iteration("tiny") == 4
    stored_4 = [s for s in stats_store.retrieve_validation_scores("tiny") if s.iteration == 4]
    assert len(stored_4) == stored_before_kill * 2 * 3
    monkeypatch.setattr(type(stats_store), "store_validation_scores", original)

    run = train(tiny_config(), weights_store, stats_store)
    assert_complete("tiny", weights_store, stats_store)
    assert run.validation_scores.iterations == [2, 4, 6]
    assert all(run.validation_scores.is_complete(i) for i in (2, 4, 6))


def best_iterations(run_name, stats_store, criteria):
    return {
        stats_store.best_validation_score(run_name, dataset, criterion).iteration
        for dataset in ("validate_0", "validate_1")
        for criterion in criteria
    }


def test_retention_while_training_keeps_latest_and_best_and_resume_continues(
    weights_store, stats_store, interrupt_at
):
    policy = RetentionPolicy(keep_last=1, keep_every=None, keep_best=False)
    config = tiny_config(num_iterations=8)
    interrupt_at(7)  # killed during iteration 7: checkpoint 6 is the latest
    with pytest.raises(Interrupted):
        train_run(Run(config), weights_store, stats_store, progress=False, retention=policy)
    criteria = Run.get_validation_scores(config).criteria
    kept = [c.iteration for c in weights_store.list_checkpoints("tiny")]
    assert kept == sorted(best_iterations("tiny", stats_store, criteria) | {6})

    interrupt_at(None)
    run = Run(config)
    point = train_run(run, weights_store, stats_store, progress=False, retention=policy)
    assert (point.iteration, point.case) == (6, "equal")
    kept = [c.iteration for c in weights_store.list_checkpoints("tiny")]
    assert kept == sorted(best_iterations("tiny", stats_store, criteria) | {8})
    assert {s.iteration for s in stats_store.retrieve_validation_scores("tiny")} == {2, 4, 6, 8}
    assert [s.iteration for s in stats_store.retrieve_training_stats("tiny")] == list(range(8))
    assert_same_state(run.model.state_dict(), weights_store.retrieve_weights("tiny", 8).model)


def test_async_checkpoints_store_and_score_exactly_what_synchronous_ones_do(weights_store, stats_store, interrupt_at):
    synchronous = train(tiny_config("sync"), weights_store, stats_store)
    interrupt_at(5)  # killed during iteration 5: checkpoint 4's upload must still land
    with pytest.raises(Interrupted):
        train_run(Run(tiny_config("async")), weights_store, stats_store, progress=False, async_checkpoint=True)
    assert weights_store.latest_iteration("async") == 4
    interrupt_at(None)
    run = Run(tiny_config("async"))
    train_run(run, weights_store, stats_store, progress=False, async_checkpoint=True)
    assert_complete("async", weights_store, stats_store)
    for iteration in (2, 4, 6):
        assert_same_state(weights_store.retrieve_weights("async", iteration).model,
                          weights_store.retrieve_weights("sync", iteration).model)
    scores = {name: [(s.iteration, s.dataset, s.criterion, s.parameters, s.value)
                     for s in stats_store.retrieve_validation_scores(name)] for name in ("sync", "async")}
    assert scores["async"] == scores["sync"]
    assert_same_state(run.optimizer.state_dict(), synchronous.optimizer.state_dict())


def test_async_checkpoints_with_retention_prune_only_stored_checkpoints(weights_store, stats_store):
    policy = RetentionPolicy(keep_last=1, keep_every=None, keep_best=False)
    config = tiny_config(num_iterations=8)
    run = Run(config)
    train_run(run, weights_store, stats_store, progress=False, retention=policy, async_checkpoint=True)
    criteria = Run.get_validation_scores(config).criteria
    kept = [c.iteration for c in weights_store.list_checkpoints("tiny")]
    assert kept == sorted(best_iterations("tiny", stats_store, criteria) | {8})
    assert_same_state(run.model.state_dict(), weights_store.retrieve_weights("tiny", 8).model)
