"""Retention: the policy's arithmetic, and pruning real stores without ever losing the latest
checkpoint or a best one."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dacapo_store.maintenance.retention import RetentionPolicy, apply_retention, prune

from .conftest import seed_run, toy_weights


def kept(policy: RetentionPolicy, iterations, protected=None) -> list[int]:
    return sorted(policy.reasons_to_keep(iterations, protected or {}))


def test_policy_keeps_last_every_and_latest() -> None:
    iterations = range(100, 1100, 100)
    assert kept(RetentionPolicy(keep_best=False), iterations) == [1000]
    assert kept(RetentionPolicy(keep_last=3), iterations) == [800, 900, 1000]
    assert kept(RetentionPolicy(keep_every=300), iterations) == [300, 600, 900, 1000]
    assert kept(RetentionPolicy(keep_last=1, keep_every=500), iterations, {200: ["best"]}) == [200, 500, 1000]
    reasons = RetentionPolicy(keep_last=1, keep_every=500).reasons_to_keep(iterations, {})
    assert reasons[1000] == ["latest", "last 1", "every 500"]


def test_keep_best_is_off_by_default_as_in_the_cli() -> None:
    """``prune`` / ``RetentionPolicy`` default to what ``dacapo-store prune`` does without
    ``--keep-best``."""
    import inspect

    assert RetentionPolicy().keep_best is False
    assert inspect.signature(prune).parameters["keep_best"].default is False


@given(
    iterations=st.sets(st.integers(0, 10_000), max_size=30),
    keep_last=st.none() | st.integers(1, 10),
    keep_every=st.none() | st.integers(1, 1000),
    protected=st.sets(st.integers(0, 10_000), max_size=5),
)
def test_policy_keeps_exactly_latest_protected_last_and_every(iterations, keep_last, keep_every, protected) -> None:
    policy = RetentionPolicy(keep_last=keep_last, keep_every=keep_every)
    result = set(kept(policy, iterations, {i: ["best"] for i in protected}))
    ordered = sorted(iterations)
    expected = set(ordered[-1:]) | (protected & iterations)
    if keep_last is not None:
        expected |= set(ordered[-keep_last:])
    if keep_every is not None:
        expected |= {i for i in iterations if i % keep_every == 0}
    assert result == expected


@pytest.mark.parametrize(
    "arguments, error",
    [({"keep_last": 0}, ValueError), ({"keep_every": -5}, ValueError), ({"keep_last": 2.0}, TypeError),
     ({"keep_every": True}, TypeError), ({"keep_best": "yes"}, TypeError)],
)
def test_bad_policies_are_refused(arguments, error) -> None:
    with pytest.raises(error):
        RetentionPolicy(**arguments)


def test_prune_keeps_latest_and_best_and_frees_bytes(ops_store) -> None:
    seed_run(ops_store)  # checkpoints 100..1000, best dice and loss at 500
    before = {info.iteration: info.size for info in ops_store.weights.list_checkpoints("run_a")}
    report = prune(ops_store.weights, ops_store.stats, "run_a", keep_last=2, keep_every=None, keep_best=False, dry_run=False)
    assert sorted(report.kept) == [500, 900, 1000]
    assert report.kept[500] == ["best val/dice", "best val/loss"]
    assert [info.iteration for info in report.removed] == [100, 200, 300, 400, 600, 700, 800]
    assert report.bytes_freed == sum(before[i] for i in (100, 200, 300, 400, 600, 700, 800))
    assert [info.iteration for info in ops_store.weights.list_checkpoints("run_a")] == [500, 900, 1000]
    assert ops_store.weights.retrieve_best("run_a", "val", "dice") == 500
    ops_store.weights.verify("run_a", 500)


def test_dry_run_prunes_nothing(ops_store) -> None:
    seed_run(ops_store, iterations=[100, 200, 300])
    report = prune(ops_store.weights, ops_store.stats, "run_a", keep_last=1, keep_every=None, keep_best=True, dry_run=True)
    assert report.dry_run and [i.iteration for i in report.removed] == [100, 200]
    assert len(ops_store.weights.list_checkpoints("run_a")) == 3


def test_best_of_every_dataset_criterion_and_direction_is_kept(ops_store) -> None:
    seed_run(ops_store, iterations=range(100, 900, 100))
    # a second dataset: a lower-is-better criterion best at 200, a NaN-only criterion
    for iteration in range(100, 900, 100):
        ops_store.stats.store_validation_scores(
            "run_a", iteration, "test", {"error": abs(iteration - 200) / 100, "broken": math.nan},
            {"error": False, "broken": True},
        )
    report = apply_retention(ops_store.weights, ops_store.stats, "run_a", RetentionPolicy(keep_best=False))
    assert sorted(report.kept) == [200, 500, 800]
    assert report.kept[200] == ["best test/error"]


def test_keep_best_also_keeps_the_best_of_each_parameter_set(ops_store) -> None:
    for iteration in (100, 200, 300):
        ops_store.weights.put_weights("run_b", iteration, toy_weights())
        for threshold, peak in ((0.3, 100), (0.5, 200)):
            ops_store.stats.store_validation_scores(
                "run_b", iteration, "val", {"dice": 1 - abs(iteration - peak) / 1000 - abs(threshold - 0.5) / 10},
                {"dice": True}, {"threshold": threshold},
            )
    without = apply_retention(ops_store.weights, ops_store.stats, "run_b", RetentionPolicy(keep_best=False), dry_run=True)
    assert sorted(without.kept) == [200, 300]
    report = apply_retention(ops_store.weights, ops_store.stats, "run_b", RetentionPolicy(keep_best=True))
    assert sorted(report.kept) == [100, 200, 300] and report.removed == ()
    assert report.kept[100] == ['best val/dice with {"threshold":0.3}']


def test_a_run_without_scores_keeps_only_the_policy_and_latest(ops_store) -> None:
    for iteration in (1, 2, 3, 4):
        ops_store.weights.put_weights("bare", iteration, toy_weights())
    report = prune(ops_store.weights, ops_store.stats, "bare", keep_every=2)
    assert sorted(report.kept) == [2, 4]
