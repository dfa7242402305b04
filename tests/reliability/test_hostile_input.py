"""Hostile input: every value is either stored and read back exactly, or refused with a clear
ValueError/TypeError with nothing written; names never change a query or reach another run."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dacapo_store import CheckpointNotFoundError, NoScoreError

from .conftest import Backend, make_backend, make_weights, tag_of

VICTIM = "victim"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = ["local", "mongomock"]

HOSTILE_NAMES = [
    {"$gt": ""},
    {"$ne": None},
    {"$regex": ".*"},
    ["victim"],
    b"victim",
    "$where",
    "$gt",
    "a.b",
    "victim.model",
    ".*",
    "victim\x00",
    "vic\x00tim",
    "x" * 5000,
    "../../../etc/passwd",
    "/absolute/path",
    "victim ",
    "VICTIM",
    "this.that.$other",
    "'; DROP TABLE checkpoints; --",
    "\u202evictim",
]
names = st.one_of(
    st.text(max_size=30),
    st.sampled_from(HOSTILE_NAMES),
    st.integers(),
    st.none(),
    st.binary(max_size=8),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
non_json = st.sampled_from([{1, 2}, b"bytes", object(), math.nan, math.inf, complex(1, 2), {1: "int key"}])
parameters = st.one_of(
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    st.dictionaries(st.text(max_size=8), st.one_of(json_values, non_json), min_size=1, max_size=3),
    st.recursive(non_json, lambda c: st.dictionaries(st.text(max_size=4), c, min_size=1, max_size=2), max_leaves=3),
    st.none(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=3),
)
scores = st.one_of(
    st.floats(),  # NaN and +-inf included
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([True, None, "0.5", complex(1, 2), np.float32(0.25), np.int64(7), [0.5]]),
)
iterations = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.sampled_from([np.int64(5), np.uint64(2**63), 2**63 - 1, 2**63]),
)


@contextmanager
def fresh_backend(kind: str) -> Iterator[Backend]:
    """A new, empty backend with the victim's checkpoint and score already stored."""
    with tempfile.TemporaryDirectory() as directory:
        generator = make_backend(kind, Path(directory))
        backend = next(generator)
        backend.weights.put_weights(VICTIM, 7, make_weights(7, size=4))
        backend.stats.store_validation_scores(VICTIM, 7, "d", {"c": 0.5}, {"c": True})
        yield backend
        generator.close()


def assert_victim_untouched(backend: Backend) -> None:
    assert [info.iteration for info in backend.weights.list_checkpoints(VICTIM)] == [7]
    assert tag_of(backend.weights.retrieve_weights(VICTIM, 7)) == 7
    assert [s.value for s in backend.stats.retrieve_validation_scores(VICTIM)] == [0.5]


def nothing_written(backend: Backend, before: tuple) -> None:
    assert snapshot(backend) == before
    assert_victim_untouched(backend)


def snapshot(backend: Backend) -> tuple:
    return (
        backend.weights.list_runs(),
        backend.stats.list_runs(),
        sorted(backend.payloads()),
        backend.pending(),
    )


@pytest.mark.slow  # a big property run (60 examples per backend)
@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(name=names)
def test_any_run_name_round_trips_or_is_refused(kind: str, name: Any) -> None:
    with fresh_backend(kind) as backend:
        before = snapshot(backend)
        try:
            backend.weights.put_weights(name, 1, make_weights(1, size=4))
        except (ValueError, TypeError) as error:
            assert str(error)
            nothing_written(backend, before)
            return
        assert sorted(backend.weights.list_runs()) == sorted({VICTIM, name})
        assert backend.weights.latest_iteration(name) == 1
        assert [info.run for info in backend.weights.list_checkpoints(name)] == [name]
        assert tag_of(backend.weights.retrieve_weights(name, 1)) == 1
        if name != VICTIM:
            backend.weights.remove(name, 1)
            backend.assert_clean()
        assert_victim_untouched(backend)


@pytest.mark.slow  # a big property run (60 examples per backend)
@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(iteration=iterations)
def test_any_iteration_round_trips_or_is_refused(kind: str, iteration: Any) -> None:
    with fresh_backend(kind) as backend:
        before = snapshot(backend)
        try:
            backend.weights.put_weights("r", iteration, make_weights(1, size=4))
        except (ValueError, TypeError) as error:
            assert str(error)
            nothing_written(backend, before)
            return
        assert backend.weights.latest_iteration("r") == iteration
        assert type(backend.weights.latest_iteration("r")) is int
        assert [info.iteration for info in backend.weights.list_checkpoints("r")] == [int(iteration)]
        assert tag_of(backend.weights.retrieve_weights("r", iteration)) == 1


@pytest.mark.slow  # a big property run (60 examples per backend)
@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(value=scores, higher_is_better=st.booleans())
def test_any_score_round_trips_or_is_refused(kind: str, value: Any, higher_is_better: bool) -> None:
    with fresh_backend(kind) as backend:
        before = snapshot(backend)
        try:
            backend.stats.store_validation_scores("r", 1, "d", {"c": value}, {"c": higher_is_better})
        except (ValueError, TypeError) as error:
            assert str(error)
            nothing_written(backend, before)
            return
        [stored] = backend.stats.retrieve_validation_scores("r")
        expected = float(value)
        assert stored.value == expected or (math.isnan(stored.value) and math.isnan(expected))
        if math.isnan(expected):
            with pytest.raises(NoScoreError):
                backend.weights.retrieve_best("r", "d", "c")
        else:
            assert backend.weights.retrieve_best("r", "d", "c") == 1
        assert_victim_untouched(backend)


@pytest.mark.slow  # a big property run (60 examples per backend)
@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(params=parameters)
def test_any_parameters_round_trip_or_are_refused(kind: str, params: Any) -> None:
    with fresh_backend(kind) as backend:
        before = snapshot(backend)
        try:
            backend.stats.store_validation_scores("r", 1, "d", {"c": 0.5}, {"c": True}, params)
        except (ValueError, TypeError) as error:
            assert str(error)
            nothing_written(backend, before)
            return
        [stored] = backend.stats.retrieve_validation_scores("r")
        assert json.dumps(stored.parameters, sort_keys=True) == json.dumps(params or {}, sort_keys=True)


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_names_cannot_change_a_query_or_reach_another_run(backend: Backend, name: Any) -> None:
    backend.weights.put_weights(VICTIM, 7, make_weights(7, size=4))
    backend.stats.store_validation_scores(VICTIM, 7, "d", {"c": 0.5}, {"c": True})
    refused = (TypeError, ValueError)
    attempts = [
        lambda: backend.weights.latest_iteration(name),
        lambda: backend.weights.list_checkpoints(name),
        lambda: backend.weights.retrieve_weights(name, 7),
        lambda: backend.weights.checkpoint_info(name, 7),
        lambda: backend.weights.remove(name, 7),
        lambda: backend.weights.retrieve_best(name, "d", "c"),
        lambda: backend.weights.retrieve_best(VICTIM, name, "c"),
        lambda: backend.weights.retrieve_best(VICTIM, "d", name),
        lambda: backend.stats.retrieve_validation_scores(name),
        lambda: backend.stats.retrieve_validation_scores(VICTIM, name),
        lambda: backend.stats.delete_validation_scores(name),
        lambda: backend.stats.delete_training_stats(name),
        lambda: backend.stats.retrieve_training_stats(name),
    ]
    for attempt in attempts:
        try:
            result = attempt()
        except (CheckpointNotFoundError, NoScoreError):
            continue  # a plain miss: the name matched nothing
        except refused as error:
            assert str(error)
            continue
        assert result in (None, [], 0), f"a hostile name reached data: {result!r}"
    assert_victim_untouched(backend)
    assert backend.weights.retrieve_best(VICTIM, "d", "c") == 7
