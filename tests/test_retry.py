"""The retry policy of the MongoDB backend: which errors are transient, backoff, budget."""

from __future__ import annotations

import logging

import pytest
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DuplicateKeyError,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
    WriteConcernError,
)

from dacapo_store import ConfigurationError
from dacapo_store.mongo.retry import RETRY_BUDGET_ENV, RetryPolicy, budget_from_environment, is_transient
from dacapo_store.testing.wire import FakeClock


def policy(fake: FakeClock, budget: float = 60.0, **options) -> RetryPolicy:
    return fake.policy(budget, **options)


def failing(errors: list[BaseException], result: str = "done"):
    """A step that raises ``errors`` one by one, then returns ``result``; counts calls."""
    calls = []

    def step():
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return step, calls


@pytest.mark.parametrize(
    "error",
    [
        AutoReconnect("connection closed"),
        NetworkTimeout("timed out"),
        ServerSelectionTimeoutError("no primary"),
        NotPrimaryError("not primary", {"code": 10107}),
        OperationFailure("stepped down", 189),
        OperationFailure("interrupted", 11602),
        OperationFailure("exceeded time limit", 262),
        OperationFailure("anything", 2, {"errorLabels": ["RetryableWriteError"]}),
        WriteConcernError("stepped down while waiting", 189),
        BulkWriteError({"writeErrors": [], "writeConcernErrors": [{"code": 11602, "errmsg": "x"}]}),
    ],
    ids=lambda error: type(error).__name__,
)
def test_failover_and_network_errors_are_transient(error) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        OperationFailure("not authorized on dacapo to execute command", 13),
        DuplicateKeyError("E11000", 11000),
        WriteConcernError("waiting for replication timed out", 64),
        BulkWriteError({"writeErrors": [{"index": 0, "code": 11000}], "writeConcernErrors": []}),
        BulkWriteError({"writeErrors": [], "writeConcernErrors": [{"code": 64, "errmsg": "wtimeout"}]}),
        ValueError("not a pymongo error"),
        OperationFailure("no code"),
    ],
    ids=lambda error: f"{type(error).__name__}-{getattr(error, 'code', '')}",
)
def test_other_errors_are_not_transient(error) -> None:
    assert not is_transient(error)


def test_a_transient_error_is_retried_until_the_step_succeeds(caplog) -> None:
    fake = FakeClock()
    step, calls = failing([AutoReconnect("reset"), OperationFailure("not primary", 10107)])
    with caplog.at_level(logging.WARNING, logger="dacapo_store.mongo.retry"):
        assert policy(fake).call(step, "storing checkpoint 1") == "done"
    assert len(calls) == 3
    assert len(fake.sleeps) == 2
    assert [record.getMessage().split(" failed")[0] for record in caplog.records] == [
        "MongoDB: storing checkpoint 1", "MongoDB: storing checkpoint 1"
    ]


def test_a_permanent_error_is_raised_at_once() -> None:
    fake = FakeClock()
    step, calls = failing([OperationFailure("not authorized", 13)])
    with pytest.raises(OperationFailure, match="not authorized"):
        policy(fake).call(step, "writing")
    assert len(calls) == 1 and fake.sleeps == []


def test_delays_double_up_to_the_cap() -> None:
    fake = FakeClock()
    delays = policy(fake, first_delay=0.5, max_delay=3.0).delays()
    assert [next(delays) for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_jitter_waits_between_half_and_all_of_each_delay() -> None:
    delays = RetryPolicy(budget=1.0, first_delay=1.0, max_delay=1.0).delays()
    assert all(0.5 <= next(delays) <= 1.0 for _ in range(100))


def test_retries_stop_when_the_budget_is_spent_and_raise_the_last_error() -> None:
    fake = FakeClock()
    errors = [AutoReconnect(f"down {i}") for i in range(1000)]
    step, calls = failing(errors)
    with pytest.raises(AutoReconnect) as caught:
        policy(fake, budget=60.0, first_delay=1.0, max_delay=8.0).call(step, "committing")
    assert sum(fake.sleeps) <= 60.0
    assert sum(fake.sleeps) + 8.0 > 60.0  # the next wait would have passed the budget
    assert str(caught.value) == f"down {len(calls) - 1}"


def test_the_budget_counts_time_spent_inside_attempts() -> None:
    fake = FakeClock()

    def slow_step():
        fake.now += 30.0  # e.g. a server selection timeout per attempt
        raise ServerSelectionTimeoutError("no primary")

    with pytest.raises(ServerSelectionTimeoutError):
        policy(fake, budget=60.0, first_delay=1.0).call(slow_step, "reserving")
    assert len(fake.sleeps) == 1  # 30 s + 1 s wait, then 61 s + 2 s would pass the budget


def test_a_zero_budget_never_retries() -> None:
    fake = FakeClock()
    step, calls = failing([AutoReconnect("reset")])
    with pytest.raises(AutoReconnect):
        policy(fake, budget=0.0).call(step, "writing")
    assert len(calls) == 1


def test_the_budget_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(RETRY_BUDGET_ENV, "120")
    assert budget_from_environment() == 120.0
    assert RetryPolicy().budget == 120.0
    monkeypatch.delenv(RETRY_BUDGET_ENV)
    assert RetryPolicy().budget == 60.0


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_a_bad_budget_in_the_environment_names_the_variable(monkeypatch, value) -> None:
    monkeypatch.setenv(RETRY_BUDGET_ENV, value)
    with pytest.raises(ConfigurationError, match=RETRY_BUDGET_ENV):
        budget_from_environment()


@pytest.mark.parametrize("field", ["budget", "first_delay", "max_delay"])
@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan"), "5", True])
def test_bad_policy_values_are_refused(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: value})
