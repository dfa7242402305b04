"""One store per location: ``open_store`` opens a directory or a MongoDB URI once, and its
weights, stats and run-config views share that one connection."""

from __future__ import annotations

import pymongo
import threading

import pytest
import torch
from click.testing import CliRunner

import dacapo_store
from dacapo_store import Weights, open_store
from dacapo_store.cli import main
from dacapo_store.testing.mongomock_support import mongomock_client

URI = "mongodb://db.example:27017/lab"


@pytest.fixture
def clients(monkeypatch) -> list:
    """Every MongoClient the package opens (each a mongomock client on one shared server)."""
    opened: list = []
    server = mongomock_client()

    def client(uri, **options):
        opened.append(uri)
        return server

    monkeypatch.setattr(pymongo, "MongoClient", client)
    return opened


def _fill(store) -> None:
    state = {"w": torch.arange(4.0)}
    for iteration, score in ((1, 0.5), (2, 0.9), (3, 0.7)):
        store.weights.put_weights("run", iteration, Weights(state, {}))
        store.stats.store_validation_scores("run", iteration, "ds", {"f1": score}, {"f1": True})
    store.run_configs.store_run_config({"name": "run", "depth": 2})


def test_a_mongodb_location_opens_one_client_for_all_its_views(clients) -> None:
    with open_store(URI) as store:
        _fill(store)
        assert store.weights.retrieve_best("run", "ds", "f1") == 2
        assert store.stats.best_validation_score("run", "ds", "f1").iteration == 2
        assert store.run_configs.retrieve_run_config("run") == {"name": "run", "depth": 2}
    assert clients == [URI]


def test_a_local_location_shares_one_catalog(tmp_path) -> None:
    with open_store(tmp_path / "store") as store:
        _fill(store)
        assert store.weights.catalog is store.stats.catalog is store.run_configs.catalog
        assert store.weights.retrieve_best("run", "ds", "f1") == 2
    assert dacapo_store.LocalStatsStore(tmp_path / "store").best_validation_score("run", "ds", "f1").iteration == 2


def test_a_cli_command_opens_one_client(clients) -> None:
    with open_store(URI) as store:
        _fill(store)
    clients.clear()
    result = CliRunner().invoke(main, ["runs", "--store", URI, "--json"])
    assert result.exit_code == 0, result.output
    assert clients == [URI]


def test_open_store_resolves_the_environment_and_opens_read_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DACAPO_STORE_URI", str(tmp_path / "nowhere"))
    store = open_store(read_only=True)
    with pytest.raises(dacapo_store.StoreNotFoundError):
        store.weights


def test_check_health_reports_findings_without_creating_anything(tmp_path) -> None:
    missing = tmp_path / "missing"
    [finding] = open_store(missing).check_health()
    assert (finding.level, finding.topic) == ("problem", "store") and not missing.exists()
    with open_store(tmp_path / "store") as store:
        _fill(store)
        findings = store.check_health()
    assert all(isinstance(finding, dacapo_store.Finding) for finding in findings)
    assert {finding.topic: finding.level for finding in findings}["catalog"] == "ok"


def test_an_sqlite_error_is_explained_with_the_catalog_it_came_from(tmp_path) -> None:
    import sqlite3

    (tmp_path / "catalog.sqlite3").mkdir()
    store = open_store(tmp_path)
    explained = store.explain_error(sqlite3.OperationalError("unable to open database file"), "unable to open")
    assert explained == f"the store's catalog {tmp_path / 'catalog.sqlite3'} is a directory, not an SQLite database file"
    assert store.explain_error(ValueError("x"), "x") == "x"


def test_threads_opening_a_store_at_once_share_one_client_and_one_view(clients, monkeypatch) -> None:
    """The first use of a view, from two threads at once: one connection, one view for both."""
    store = open_store(URI)
    real_open = type(store)._open_weights
    seen_by_other: list = []
    others: list[threading.Thread] = []

    def open_while_another_thread_asks(self):
        if not others:
            others.append(threading.Thread(target=lambda: seen_by_other.append(store.weights)))
            others[0].start()
            others[0].join(timeout=0.5)  # without a lock the other thread opens its own meanwhile
        return real_open(self)

    monkeypatch.setattr(type(store), "_open_weights", open_while_another_thread_asks)
    first = store.weights
    others[0].join()
    assert seen_by_other == [first] and clients == [URI]
    store.close()
