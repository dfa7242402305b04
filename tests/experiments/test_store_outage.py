"""train_run while the store is unavailable: the training state is kept, storing is retried,
and training stops with a clear error only when every retry failed; nothing is lost silently."""

from __future__ import annotations

import pytest

from dacapo_store import (
    CheckpointNotStoredError,
    NotAuthorizedError,
    StoreConnectionError,
    WriteConcernFailedError,
)
from dacapo_store.experiments import Run, train_run
from dacapo_store.experiments.train import StoreRetry

from .conftest import tiny_config


class Flaky:
    """Wraps a store: ``method`` raises ``errors`` one by one (before doing anything, or, with
    ``after=True``, after doing the work: a lost reply), then works."""

    def __init__(self, store, method: str, errors, after: bool = False) -> None:
        self._store, self._method, self._errors, self._after = store, method, list(errors), after
        self.calls = 0

    def __getattr__(self, name):
        attribute = getattr(self._store, name)
        if name != self._method:
            return attribute

        def flaky(*args, **kwargs):
            self.calls += 1
            if self._errors and not self._after:
                raise self._errors.pop(0)
            result = attribute(*args, **kwargs)
            if self._errors:
                raise self._errors.pop(0)
            return result

        return flaky


def no_wait(waits: list) -> StoreRetry:
    return StoreRetry(attempts=3, wait=30.0, sleep=waits.append)


def unreachable(n: int) -> list[Exception]:
    return [StoreConnectionError(f"MongoDB at mongodb://h/ unreachable ({i})") for i in range(n)]


def test_a_checkpoint_store_that_fails_twice_is_retried_and_training_completes(weights_store, stats_store):
    flaky = Flaky(weights_store, "store_weights", unreachable(1) + [WriteConcernFailedError("wtimeout")])
    waits: list[float] = []
    train_run(Run(tiny_config()), flaky, stats_store, progress=False, store_retry=no_wait(waits))
    assert [c.iteration for c in weights_store.list_checkpoints("tiny")] == [2, 4, 6]
    assert waits == [30.0, 30.0]
    assert flaky.calls == 5  # 2 failed attempts, then checkpoints 2, 4 and 6


def test_training_stats_are_retried_too(weights_store, stats_store):
    flaky = Flaky(stats_store, "store_training_stats", unreachable(2))
    train_run(Run(tiny_config()), weights_store, flaky, progress=False, store_retry=no_wait([]))
    assert [s.iteration for s in stats_store.retrieve_training_stats("tiny")] == list(range(6))


def test_a_commit_whose_reply_was_lost_is_accepted_on_the_next_attempt(weights_store, stats_store):
    flaky = Flaky(weights_store, "store_weights", unreachable(1), after=True)
    train_run(Run(tiny_config()), flaky, stats_store, progress=False, store_retry=no_wait([]))
    assert [c.iteration for c in weights_store.list_checkpoints("tiny")] == [2, 4, 6]


def test_a_store_down_through_every_retry_stops_training_with_a_clear_error_and_the_run_resumes(
    weights_store, stats_store
):
    config = tiny_config()
    train_run(Run(config), weights_store, stats_store, progress=False)
    longer = Run(tiny_config(num_iterations=8))
    down = Flaky(weights_store, "store_weights", unreachable(3))
    waits: list[float] = []
    with pytest.raises(CheckpointNotStoredError) as caught:
        train_run(longer, down, stats_store, progress=False, store_retry=no_wait(waits))
    message = str(caught.value)
    assert "checkpoint 8 of run 'tiny'" in message and "after 3 attempts" in message
    assert "unreachable (2)" in message and isinstance(caught.value.__cause__, StoreConnectionError)
    assert waits == [30.0, 30.0]
    assert longer.training_stats.trained_until() == 8  # the state was kept until the end
    assert weights_store.latest_iteration("tiny") == 6
    train_run(Run(tiny_config(num_iterations=8)), weights_store, stats_store, progress=False)
    assert [c.iteration for c in weights_store.list_checkpoints("tiny")] == [2, 4, 6, 8]


def test_an_error_that_retrying_cannot_fix_fails_at_once(weights_store, stats_store):
    refused = Flaky(weights_store, "store_weights", [NotAuthorizedError("not authorized to write")])
    waits: list[float] = []
    with pytest.raises(NotAuthorizedError):
        train_run(Run(tiny_config()), refused, stats_store, progress=False, store_retry=no_wait(waits))
    assert waits == [] and refused.calls == 1


@pytest.mark.parametrize("changes", [{"attempts": 0}, {"attempts": 1.5}, {"wait": -1}, {"wait": float("inf")}])
def test_bad_retry_settings_are_refused(changes):
    with pytest.raises(ValueError):
        StoreRetry(**changes)


def test_a_commit_that_may_not_survive_is_stored_again_over_itself(weights_store, stats_store):
    uncertain = WriteConcernFailedError("committing: not confirmed, could not be undone: may or may not survive")
    uncertain.commit_may_survive = True
    flaky = Flaky(weights_store, "store_weights", [uncertain], after=True)
    overwrites = []
    store_weights = weights_store.store_weights

    def recording(run, iteration, overwrite=False, **options):
        overwrites.append((iteration, overwrite))
        return store_weights(run, iteration, overwrite=overwrite, **options)

    weights_store.store_weights = recording
    train_run(Run(tiny_config()), flaky, stats_store, progress=False, store_retry=no_wait([]))
    assert overwrites == [(2, False), (2, True), (4, False), (6, False)]
    assert [c.iteration for c in weights_store.list_checkpoints("tiny")] == [2, 4, 6]
