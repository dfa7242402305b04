"""The model really learns: the best stored validation score beats the untrained model clearly."""

from __future__ import annotations

from dacapo_store import LocalStatsStore, LocalWeightsStore
from dacapo_store.experiments import Run, evaluate, train_run
from dacapo_store.experiments.demo import demo_run_config


def best_untrained(evaluations, dataset, criterion, higher_is_better):
    values = [e.scores[criterion] for e in evaluations if e.dataset == dataset]
    return max(values) if higher_is_better else min(values)


def test_the_demo_model_learns(tmp_path):
    weights_store, stats_store = LocalWeightsStore(tmp_path), LocalStatsStore(tmp_path)
    run = Run(demo_run_config("learns", iterations=150))
    untrained = evaluate(run, run.model)
    train_run(run, weights_store, stats_store, progress=False)
    for dataset in ("validate_0", "validate_1"):
        f1 = stats_store.best_validation_score(run, dataset, "f1_score").value
        voi = stats_store.best_validation_score(run, dataset, "voi").value
        assert f1 > 0.8 and f1 > best_untrained(untrained, dataset, "f1_score", True) + 0.3
        assert voi < best_untrained(untrained, dataset, "voi", False) - 0.2
