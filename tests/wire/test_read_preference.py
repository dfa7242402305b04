"""A URI that sends reads to secondaries (``readPreference=secondaryPreferred``) against a
secondary that lags behind the primary: a checkpoint the catalog lists (read from the primary)
is read whole and verified, never reported corrupt or missing, and garbage collection judges
only from the primary."""

from __future__ import annotations

import pytest
from bson import ObjectId
from click.testing import CliRunner

from dacapo_store import CorruptCheckpointError

from dacapo_store.cli import main
from dacapo_store.testing.contract import ToyRun, assert_state_equal

from .conftest import DATABASE, open_weights

SECONDARY = {"readPreference": "secondaryPreferred"}


@pytest.fixture
def run() -> ToyRun:
    run = ToyRun("r")
    run.train_steps()
    return run


@pytest.fixture
def weights(server, clock):
    return open_weights(server, clock, uri_options=SECONDARY)


def test_a_checkpoint_the_secondary_lacks_is_read_from_the_primary(server, weights, run) -> None:
    server.lag_secondary()
    weights.store_weights(run, 1)
    server.clear()
    loaded = weights.retrieve_weights("r", 1)
    assert_state_equal(loaded.model, run.model.state_dict())
    assert_state_equal(loaded.optimizer, run.optimizer.state_dict())
    assert weights.verify("r", 1) == weights.checkpoint_info("r", 1)
    assert {c.read_preference for c in server.sent("find", weights.bucket_files.name)} == {
        "secondaryPreferred", "primary"
    }, "tried on a secondary first, then read from the primary"


def test_a_checkpoint_the_secondary_holds_is_read_there(server, weights, run) -> None:
    weights.store_weights(run, 1)
    server.lag_secondary()
    server.clear()
    assert_state_equal(weights.retrieve_weights("r", 1).model, run.model.state_dict())
    assert {c.read_preference for c in server.sent("find", weights.bucket_chunks.name)} == {"secondaryPreferred"}


def test_verify_reports_an_overwritten_checkpoint_intact(server, weights, run) -> None:
    weights.store_weights(run, 1)
    server.lag_secondary()  # lists the old version; the catalog on the primary has the new one
    run.train_steps(2)
    weights.store_weights(run, 1, overwrite=True)
    result = CliRunner().invoke(main, ["verify", "--store", server.uri_with(DATABASE, **SECONDARY)])
    assert "BAD" not in result.output and result.exit_code == 0, result.output
    assert "1 checkpoint(s) of 1 run(s) intact" in result.output


def test_verify_checks_the_primary_copy(server, weights, run) -> None:
    info = weights.store_weights(run, 1)
    server.lag_secondary()  # still holds an intact copy
    chunks = server.database(DATABASE)[weights.bucket_chunks.name]
    chunks.delete_many({"files_id": ObjectId(info.parts["model"].location)})
    with pytest.raises(CorruptCheckpointError, match="chunk n=0 is missing"):
        weights.verify("r", 1)
    # a load may use the secondary's copy: it matches the recorded size and digest
    assert_state_equal(weights.retrieve_weights("r", 1).model, run.model.state_dict())


def test_gc_judges_orphan_chunks_from_the_primary(server, weights, run) -> None:
    info = weights.store_weights(run, 1)
    server.lag_secondary()
    # the secondary has replicated the model's chunks but not yet its files document
    server.secondary_database(DATABASE)[weights.bucket_files.name].delete_one(
        {"_id": ObjectId(info.parts["model"].location)}
    )
    server.clear()
    report = weights.collect_garbage(older_than=weights.stale_after, now=2**40)
    scans = [c for c in server.sent() if c.name in ("find", "distinct")]
    assert report.items == ()
    assert scans and {c.read_preference for c in scans} == {"primary"}
    assert_state_equal(weights.retrieve_weights("r", 1).model, run.model.state_dict())
