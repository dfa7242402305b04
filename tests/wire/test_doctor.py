"""``dacapo-store doctor`` over the wire: what it reports for a good setup, a read-only user,
missing indexes, a weak write concern, a standalone server, an unreachable server and a local
store."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dacapo_store.cli import main
from dacapo_store.testing.contract import ToyRun
from dacapo_store.testing.wire import WireServer

from .conftest import DATABASE, open_stats, open_weights


def doctor(store: str) -> tuple[int, list[dict]]:
    result = CliRunner().invoke(main, ["doctor", "--json", "--store", store])
    return result.exit_code, json.loads(result.output[: result.output.rindex("]") + 1])


def levels(findings: list[dict]) -> dict[str, set[str]]:
    by_topic: dict[str, set[str]] = {}
    for finding in findings:
        by_topic.setdefault(finding["topic"], set()).add(finding["level"])
    return by_topic


@pytest.fixture
def opened(server, clock):
    """A store opened once for writing (so its indexes exist)."""
    open_weights(server, clock)
    open_stats(server, clock)
    server.clear()
    return server


def test_a_good_setup_has_no_problem_and_doctor_writes_nothing(opened) -> None:
    status, findings = doctor(opened.uri_with(DATABASE, wtimeoutMS="60000"))
    assert status == 0
    by_topic = levels(findings)
    assert by_topic["connection"] == by_topic["server"] == by_topic["user"] == by_topic["indexes"] == {"ok"}
    assert by_topic["write concern"] == {"ok"}
    assert by_topic["topology"] == {"warning"}  # one member only
    names = {c.name for c in opened.sent()}
    assert {"buildInfo", "connectionStatus", "listIndexes"} <= names
    assert names.isdisjoint({"insert", "update", "delete", "findAndModify", "createIndexes"})


def test_a_read_user_a_weak_write_concern_and_direct_connection_are_warnings(opened) -> None:
    opened.role = "read"
    status, findings = doctor(opened.uri_with(DATABASE, w="1", journal="false", directConnection="true"))
    assert status == 0
    messages = " | ".join(f["message"] for f in findings if f["level"] == "warning")
    assert "may only read database 'labdb'" in messages
    assert "w=1" in messages and "journal=false" in messages and "no wtimeoutMS" in messages
    assert "directConnection=true never follows a new primary" in messages


def test_a_missing_index_is_a_problem(opened, clock) -> None:
    weights = open_weights(opened, clock, read_only=True)
    opened.database(DATABASE)[weights.checkpoints.name].drop_index("run_iteration")
    status, findings = doctor(opened.uri_with(DATABASE))
    assert status == 1
    [problem] = [f for f in findings if f["level"] == "problem"]
    assert problem["topic"] == "indexes" and "lacks run_iteration" in problem["message"]


def test_an_empty_database_is_named(server) -> None:
    status, findings = doctor(server.uri_with("typo"))
    assert status == 0
    assert any("database 'typo' holds no dacapo-store collections" in f["message"] for f in findings)


def test_a_standalone_server_is_a_warning() -> None:
    with WireServer(replica_set=False) as standalone:
        status, findings = doctor(standalone.uri_with(DATABASE))
    assert status == 0
    [topology] = [f for f in findings if f["topic"] == "topology"]
    assert topology["level"] == "warning" and "standalone" in topology["message"]


def test_an_unreachable_server_is_a_problem_without_the_password() -> None:
    status, findings = doctor("mongodb://u:Zq9%40Xw@127.0.0.1:9/lab?serverSelectionTimeoutMS=200")
    assert status == 1
    assert [f["level"] for f in findings] == ["ok", "problem"]
    assert "Zq9" not in json.dumps(findings) and "Connection refused" in findings[1]["message"]


def test_doctor_on_local_stores(tmp_path) -> None:
    status, findings = doctor(str(tmp_path / "missing"))
    assert status == 1 and "no store at" in findings[0]["message"]
    from dacapo_store import LocalWeightsStore
    from dacapo_store.testing.contract import ToyRun

    LocalWeightsStore(tmp_path / "store").store_weights(ToyRun("r"), 1)  # opening alone creates nothing
    status, findings = doctor(str(tmp_path / "store"))
    assert status == 0
    assert [(f["topic"], f["level"]) for f in findings] == [("store", "ok"), ("permissions", "ok"), ("catalog", "ok")]
    assert "integrity check: ok" in findings[2]["message"]


@pytest.mark.parametrize("collection, index", [("bucket_chunks", "files_id_1_n_1"), ("bucket_files", "filename_1_uploadDate_1")])
def test_a_missing_gridfs_index_is_a_problem(opened, clock, collection, index) -> None:
    weights = open_weights(opened, clock)
    run = ToyRun("r")
    weights.store_weights(run, 1)  # GridFS creates its indexes on the first upload
    assert doctor(opened.uri_with(DATABASE))[0] == 0
    name = getattr(weights, collection).name
    opened.database(DATABASE)[name].drop_index(index)
    status, findings = doctor(opened.uri_with(DATABASE))
    assert status == 1
    [problem] = [f for f in findings if f["level"] == "problem"]
    assert problem["topic"] == "indexes" and f"{name} lacks {index}" in problem["message"]
    assert f'db.getCollection("{name}").createIndex(' in problem["message"]


def test_a_read_preference_other_than_primary_is_a_warning(opened) -> None:
    status, findings = doctor(opened.uri_with(DATABASE, wtimeoutMS="60000", readPreference="secondaryPreferred"))
    assert status == 0
    [warning] = [f for f in findings if f["topic"] == "read preference"]
    assert warning["level"] == "warning" and "readPreference=secondaryPreferred" in warning["message"]
    _, findings = doctor(opened.uri_with(DATABASE, wtimeoutMS="60000"))
    assert [f["level"] for f in findings if f["topic"] == "read preference"] in ([], ["ok"])
