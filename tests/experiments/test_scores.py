"""TrainingStats and ValidationScores, and their agreement with the stores."""

from __future__ import annotations

import itertools
import math
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dacapo_store import NoScoreError, TrainingIterationStats
from dacapo_store.experiments import Run, TrainingStats, ValidationScores

from .conftest import tiny_config

PARAMETERS = [{"threshold": 0.3}, {"threshold": 0.7}]
CRITERIA = {"f1_score": True, "voi": False}


def stats(iteration: int) -> TrainingIterationStats:
    return TrainingIterationStats(iteration, loss=1.0 / (iteration + 1), time=0.01)


def test_training_stats_count_completed_iterations():
    training = TrainingStats()
    assert training.trained_until() == 0
    for iteration in range(5):
        training.add_iteration_stats(stats(iteration))
    assert training.trained_until() == 5
    training.delete_after(3)  # keep what checkpoint 3 covers: iterations 0, 1, 2
    assert [s.iteration for s in training.iteration_stats] == [0, 1, 2]
    assert training.trained_until() == 3
    with pytest.raises(ValueError, match="iteration 1 added after iteration 2"):
        training.add_iteration_stats(stats(1))
    training.add_iteration_stats(stats(6))  # a gap is allowed (weights stored ahead of stats)
    assert training.trained_until() == 7
    assert TrainingStats([stats(1), stats(0)]).trained_until() == 2


def scores_with(*entries) -> ValidationScores:
    scores = ValidationScores(PARAMETERS, ["a", "b"], CRITERIA)
    for iteration, dataset, parameters, values in entries:
        scores.add_iteration_scores(iteration, dataset, parameters, values)
    return scores


def test_validation_scores_index_and_completeness():
    scores = scores_with(
        (2, "a", PARAMETERS[0], {"f1_score": 0.5, "voi": 1.0}),
        (2, "a", PARAMETERS[1], {"f1_score": 0.6, "voi": 0.9}),
        (2, "b", PARAMETERS[0], {"f1_score": 0.4, "voi": 1.1}),
    )
    assert scores.iterations == [2]
    assert not scores.is_complete(2)  # dataset b lacks threshold 0.7
    scores.add_iteration_scores(2, "b", PARAMETERS[1], {"f1_score": 0.3, "voi": 1.2})
    assert scores.is_complete(2)
    assert not scores.is_complete(4)
    assert scores.validated_until() == 2
    with pytest.raises(ValueError, match="criterion 'unknown'"):
        scores.add_iteration_scores(4, "a", PARAMETERS[0], {"unknown": 1.0})


def test_validation_scores_delete_after_keeps_that_checkpoint():
    scores = scores_with(*((i, "a", PARAMETERS[0], {"f1_score": 0.1 * i, "voi": 1.0}) for i in (2, 4, 6)))
    scores.delete_after(4)
    assert scores.iterations == [2, 4]  # DaCapo's off-by-one dropped checkpoint 4 here
    assert scores.validated_until() == 4
    scores.delete_after(0)
    assert scores.validated_until() == 0


def test_get_best_uses_each_criterions_direction():
    scores = scores_with(
        (2, "a", PARAMETERS[0], {"f1_score": 0.5, "voi": 0.2}),
        (4, "a", PARAMETERS[1], {"f1_score": 0.9, "voi": 0.8}),
        (6, "a", PARAMETERS[0], {"f1_score": math.nan, "voi": math.nan}),
        (8, "a", PARAMETERS[0], {"f1_score": 0.9, "voi": 0.2}),
    )
    best_f1 = scores.get_best("a", "f1_score")
    assert (best_f1.iteration, best_f1.parameters, best_f1.value) == (4, PARAMETERS[1], 0.9)  # tie -> earliest
    best_voi = scores.get_best("a", "voi")
    assert (best_voi.iteration, best_voi.value) == (2, 0.2)  # lower is better
    with pytest.raises(NoScoreError):
        scores.get_best("b", "f1_score")


def test_get_validation_scores_builds_no_model_optimizer_or_trainer(monkeypatch):
    def forbidden(self):
        raise AssertionError(f"{type(self).__name__}.build must not be called")

    config = tiny_config()
    for plugin in (config.architecture_config, config.trainer_config):
        monkeypatch.setattr(type(plugin), "build", forbidden)
    scores = Run.get_validation_scores(config)
    assert scores.datasets == ["validate_0", "validate_1"]
    assert scores.parameters == [{"threshold": 0.3}, {"threshold": 0.7}]
    assert scores.criteria == {"f1_score": True, "iou": True, "voi": False}
    assert scores.iterations == []


score_values = st.one_of(st.floats(allow_nan=True, allow_infinity=False, width=32), st.sampled_from([0.0, 0.5, 1.0]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(score_values, min_size=1, max_size=24),
    criterion=st.sampled_from(sorted(CRITERIA)),
)
def test_get_best_agrees_with_the_stores(weights_store, stats_store, values, criterion):
    run = f"agree-{uuid.uuid4()}"  # the store outlives each example: a fresh run per example
    memory = ValidationScores(PARAMETERS, ["a"], CRITERIA)
    keys = itertools.product(range(0, 100, 10), PARAMETERS)  # iterations x parameter sets
    for value, (iteration, parameters) in zip(values, keys):
        memory.add_iteration_scores(iteration, "a", parameters, {criterion: value})
        stats_store.store_validation_scores(run, iteration, "a", {criterion: value}, CRITERIA, parameters)
    if all(math.isnan(v) for v in values):
        with pytest.raises(NoScoreError):
            memory.get_best("a", criterion)
        with pytest.raises(NoScoreError):
            weights_store.retrieve_best(run, "a", criterion)
        return
    best = memory.get_best("a", criterion)
    assert best.iteration == weights_store.retrieve_best(run, "a", criterion)
    stored = stats_store.best_validation_score(run, "a", criterion)
    assert (stored.iteration, dict(stored.parameters), stored.value) == (best.iteration, best.parameters, best.value)


def test_scores_from_the_store_fill_validation_scores(stats_store):
    stats_store.store_validation_scores("r", 4, "a", {"f1_score": 0.7, "voi": 0.3}, CRITERIA, PARAMETERS[1])
    scores = ValidationScores(PARAMETERS, ["a"], CRITERIA)
    scores.add_records(stats_store.retrieve_validation_scores("r"))
    best = scores.get_best("a", "voi")
    assert (best.iteration, best.parameters, best.value) == (4, PARAMETERS[1], pytest.approx(0.3))
