"""``dacapo-store ui``: its help, the one-line error without the ui extra, the stores it opens
(read-only, labelled without a password), where it listens by default, and the line that
``demo`` ends with."""

from __future__ import annotations

import shlex
import sys

import pymongo
import pytest
import torch
from click.testing import CliRunner

from dacapo_store import LocalWeightsStore, ReadOnlyStoreError, TrainingIterationStats, Weights
from dacapo_store.testing.mongomock_support import mongomock_client
from dacapo_store.cli import main
from dacapo_store.cli.ui_commands import dashboard_command_line

from .conftest import HOSTILE, require_ui_extra, seed

require_ui_extra()

from dacapo_store.experiments.config_store import LocalRunConfigStore  # noqa: E402
from dacapo_store.local import LocalStatsStore  # noqa: E402
from dacapo_store.ui import queries, serving  # noqa: E402
from dacapo_store.ui.commands import prune_dry_run_command  # noqa: E402

PASSWORD_URI = "mongodb://lab:s3cr%40t@db.example:27017/lab"


@pytest.fixture(autouse=True)
def no_store_settings(monkeypatch) -> None:
    monkeypatch.delenv("DACAPO_STORE_URI", raising=False)


@pytest.fixture
def served(monkeypatch) -> list:
    """Instead of serving, record ``(app, host, port)``."""
    calls: list = []
    monkeypatch.setattr(serving, "serve", lambda app, host, port: calls.append((app, host, port)))
    return calls


def test_help_names_the_extra_the_defaults_and_the_options() -> None:
    result = CliRunner().invoke(main, ["ui", "--help"])
    assert result.exit_code == 0
    for text in ("read-only web dashboard", "pip install", "'dacapo-store[ui]'", "127.0.0.1", "8765", "--active-minutes"):
        assert text in result.output
    assert "ui " in CliRunner().invoke(main, ["--help"]).output


def test_without_the_ui_extra_one_line_says_how_to_install_it(monkeypatch, tmp_path) -> None:
    for module in [name for name in sys.modules if name.startswith("dacapo_store.ui.")]:
        monkeypatch.delitem(sys.modules, module)
    for module in [name for name in sys.modules if name.split(".")[0] == "starlette"]:
        monkeypatch.setitem(sys.modules, module, None)  # importing it raises ImportError
    result = CliRunner().invoke(main, ["ui", "--store", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: the dashboard needs the ui extra: pip install 'dacapo-store[ui]' (starlette is not installed)\n"
    )


def test_it_serves_the_store_read_only_on_127_0_0_1_port_8765_by_default(tmp_path, served) -> None:
    directory = tmp_path / "store"
    seed(LocalWeightsStore(directory), LocalStatsStore(directory), LocalRunConfigStore(directory))
    result = CliRunner().invoke(main, ["ui", "--store", str(directory)])
    assert result.exit_code == 0, result.output
    assert f"Dashboard of the store {directory}" in result.stdout and "http://127.0.0.1:8765/" in result.stdout
    [(app, host, port)] = served
    assert (host, port) == ("127.0.0.1", 8765)
    assert app.state.stores.weights.catalog.read_only and app.state.stores.stats.catalog.read_only


def test_host_port_and_activity_limit_are_options(tmp_path, served) -> None:
    directory = tmp_path / "store"
    seed(LocalWeightsStore(directory), LocalStatsStore(directory), LocalRunConfigStore(directory))
    result = CliRunner().invoke(main, ["ui", "--store", str(directory), "--host", "::1", "--port", "9000", "--active-minutes", "2.5"])
    assert result.exit_code == 0, result.output
    assert "http://[::1]:9000/" in result.stdout and served[0][1:] == ("::1", 9000)


def test_a_missing_store_is_one_error_line_and_nothing_is_created(tmp_path, served) -> None:
    result = CliRunner().invoke(main, ["ui", "--store", str(tmp_path / "none")])
    assert result.exit_code == 1 and result.stderr.startswith("error: no store at ") and not served
    assert not (tmp_path / "none").exists()


def test_the_stores_open_read_only_over_one_client_and_the_label_hides_the_password(monkeypatch) -> None:
    clients, server = [], mongomock_client()

    def client(uri, **options):
        clients.append(uri)
        return server

    monkeypatch.setattr(pymongo, "MongoClient", client)
    stores = queries.open_dashboard_stores(PASSWORD_URI)
    assert stores.label == "mongodb://lab:***@db.example:27017/lab"
    assert clients == [PASSWORD_URI]
    with pytest.raises(ReadOnlyStoreError):
        stores.weights.put_weights("r", 1, Weights({"w": torch.ones(1)}, None))
    with pytest.raises(ReadOnlyStoreError):
        stores.stats.store_training_stats("r", [TrainingIterationStats(1, 0.5, 0.1)])
    with pytest.raises(ReadOnlyStoreError):
        stores.configs.store_run_config({"name": "r"})


def test_the_dashboard_command_names_the_store_exactly_but_never_its_password(tmp_path) -> None:
    assert dashboard_command_line(str(tmp_path / "a b")) == f"dacapo-store ui --store '{tmp_path / 'a b'}'"
    assert dashboard_command_line(PASSWORD_URI) == "dacapo-store ui --store 'mongodb://lab:***@db.example:27017/lab'"


def test_an_unreachable_server_is_one_error_line_without_the_password(monkeypatch, served) -> None:
    monkeypatch.setenv("DACAPO_STORE_RETRY_SECONDS", "0")
    uri = "mongodb://lab:s3cr%40t@127.0.0.1:9/lab?serverSelectionTimeoutMS=200&connectTimeoutMS=200"
    result = CliRunner().invoke(main, ["ui", "--store", uri])
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    assert "s3cr" not in result.output and not served


def test_the_command_lines_a_run_page_shows_run_as_shown(tmp_path, monkeypatch) -> None:
    directory = tmp_path / "store"
    seed(LocalWeightsStore(directory), LocalStatsStore(directory), LocalRunConfigStore(directory))
    monkeypatch.chdir(tmp_path)
    stores = queries.open_dashboard_stores(str(directory))
    for run in ("alpha", HOSTILE):
        detail = queries.run_detail(stores, run, queries.RetentionPolicy())
        for best in detail["best"]:
            for name in ("best", "export"):
                words = shlex.split(best["commands"][name])
                assert words[0] == "dacapo-store"
                result = CliRunner().invoke(main, words[1:])
                assert result.exit_code == 0, (best["commands"][name], result.output)
            exported = tmp_path / shlex.split(best["commands"]["export"])[5]
            assert exported.is_file()
            exported.unlink()
            namespace: dict = {}
            exec(best["commands"]["load"], namespace)
            assert set(namespace["weights"].model) == set(LocalWeightsStore(directory).retrieve_weights(run, best["iteration"]).model)
        prune = shlex.split(prune_dry_run_command(run, 1, None, False, str(directory)))
        assert CliRunner().invoke(main, prune[1:]).exit_code == 0
