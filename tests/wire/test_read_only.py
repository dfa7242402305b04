"""MongoDB's ``read`` role over the wire: opening a store needs only read privileges, every
read works (also through the CLI), and a write is refused as "not authorized to write", a
PermissionError, never as a connection error."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from dacapo_store import (
    MongoWeightsStore,
    NotAuthorizedError,
    ReadOnlyStoreError,
    StoreConnectionError,
    TrainingIterationStats,
)
from dacapo_store.cli import main
from dacapo_store.testing.contract import ToyRun

from ..test_read_only_local import assert_reads_work
from .conftest import DATABASE, open_stats, open_weights

WRITES = {"insert", "update", "delete", "findandmodify", "createindexes"}


@pytest.fixture
def run() -> ToyRun:
    return ToyRun("r")


@pytest.fixture
def seeded(server, clock, run):
    """Checkpoints 1 and 2 with scores and stats, written by a readWrite user; then the
    connected user has only the ``read`` role and the command log is cleared."""
    weights, stats = open_weights(server, clock), open_stats(server, clock)
    for iteration, dice in ((1, 0.7), (2, 0.9)):
        weights.store_weights(run, iteration)
        stats.store_validation_scores(run, iteration, "val", {"dice": dice}, {"dice": True})
    stats.store_training_stats(run, [TrainingIterationStats(i, 0.5, 0.1) for i in range(2)])
    server.role = "read"
    server.clear()
    return server


def test_a_read_only_store_checks_indexes_instead_of_creating_them(seeded, clock, run, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        weights, stats = open_weights(seeded, clock, read_only=True), open_stats(seeded, clock, read_only=True)
    assert seeded.sent("createIndexes") == []
    assert {c.collection.removeprefix(weights.database.collection_prefix) for c in seeded.sent("listIndexes")} == {
        "checkpoints", "validation_scores", "training_stats"
    }
    assert caplog.records == []  # every index is there
    assert_reads_work(weights, stats, run)
    assert [c for c in seeded.sent() if c.name.lower() in WRITES] == []


def test_a_read_user_opening_for_writing_gets_a_warning_and_still_reads(seeded, clock, run, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        weights, stats = open_weights(seeded, clock), open_stats(seeded, clock)
    assert any("not authorized to create indexes" in record.getMessage() for record in caplog.records)
    assert_reads_work(weights, stats, run)


def test_a_write_by_a_read_user_is_not_authorized_never_a_connection_error(seeded, clock, run) -> None:
    weights, stats = open_weights(seeded, clock), open_stats(seeded, clock)
    attempts = [
        lambda: weights.store_weights(run, 3),
        lambda: weights.remove("r", 1),
        lambda: stats.store_validation_scores(run, 3, "val", {"dice": 1.0}, {"dice": True}),
        lambda: stats.store_training_stats(run, [TrainingIterationStats(5, 0.1, 0.1)]),
    ]
    for attempt in attempts:
        with pytest.raises(NotAuthorizedError) as caught:
            attempt()
        assert isinstance(caught.value, PermissionError)
        assert not isinstance(caught.value, StoreConnectionError)
        assert "not authorized to write" in str(caught.value)
    assert clock.sleeps == []  # never retried
    assert [c.iteration for c in weights.list_checkpoints("r")] == [1, 2]


def test_a_store_opened_read_only_sends_no_write_at_all(server, clock, run) -> None:
    weights = open_weights(server, clock, read_only=True)  # the user could write; the store won't
    with pytest.raises(ReadOnlyStoreError, match="opened read-only: not authorized to write"):
        weights.store_weights(run, 1)
    with pytest.raises(ReadOnlyStoreError):
        weights.collect_garbage(older_than=3600)
    assert [c for c in server.sent() if c.name.lower() in WRITES] == []


def test_a_missing_index_is_reported_and_reading_goes_on(seeded, clock, run, caplog) -> None:
    scores = seeded.database(DATABASE)[open_weights(seeded, clock, read_only=True).scores.name]
    scores.drop_index("best_score")
    with caplog.at_level(logging.WARNING):
        weights = open_weights(seeded, clock, read_only=True)
    [warning] = [record.getMessage() for record in caplog.records]
    assert "index 'best_score'" in warning and "is missing" in warning
    assert weights.retrieve_best("r", "val", "dice") == 2


def test_cli_runs_and_other_read_commands_work_for_a_read_user(seeded, tmp_path) -> None:
    uri = seeded.uri_with(DATABASE)
    runner = CliRunner()
    runs = runner.invoke(main, ["runs", "--store", uri])
    assert runs.exit_code == 0, runs.output
    assert runs.stdout.splitlines()[1].split()[:3] == ["r", "2", "2"]
    for command in (["checkpoints", "r"], ["scores", "r"], ["best", "r", "val", "dice"], ["du"], ["verify"],
                    ["export", "r", "2", "-o", str(tmp_path / "c.pt")], ["plot", "r", "-o", str(tmp_path / "r.png")]):
        result = runner.invoke(main, [*command, "--store", uri])
        assert result.exit_code == 0, (command, result.output)
    assert seeded.sent("createIndexes") == []
    assert [c for c in seeded.sent() if c.name.lower() in WRITES] == []


def test_cli_writes_by_a_read_user_fail_with_one_clear_line(seeded, tmp_path) -> None:
    uri = seeded.uri_with(DATABASE)
    runner = CliRunner()
    exported = tmp_path / "c.pt"
    assert runner.invoke(main, ["export", "r", "2", "-o", str(exported), "--store", uri]).exit_code == 0
    result = runner.invoke(main, ["import", str(exported), "r", "9", "--store", uri])
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()[-1:]
    assert line.startswith("error: MongoDB at ") and "not authorized to write (reserving checkpoint 9" in line


def test_a_read_only_store_on_an_empty_database_reads_nothing(server, clock) -> None:
    weights = MongoWeightsStore(server.uri_with("empty"), read_only=True, retry=clock.policy())
    try:
        assert weights.list_runs() == [] and weights.latest_iteration("r") is None
    finally:
        weights.database.client.close()
