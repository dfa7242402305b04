"""Store resolution: explicit value, $DACAPO_STORE_URI, dacapo.yaml, then the local default;
bad values name the setting and where it came from, never a password."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import mongomock
import pytest

from dacapo_store import (
    ConfigurationError,
    ConfigurationWarning,
    LocalStatsStore,
    LocalWeightsStore,
    MongoStatsStore,
    MongoWeightsStore,
)
from dacapo_store.config import create_stats_store, create_weights_store, resolve_store
from dacapo_store.testing.mongomock_support import patch_mongomock


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Path:
    """No setting from the real environment: empty HOME and cwd, no variables."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    for variable in ("DACAPO_STORE_URI", "DACAPO_OPTIONS_FILE", "XDG_DATA_HOME", "DACAPO_STORE_COLLECTION_PREFIX"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


def write_options(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_default_is_the_local_data_directory(isolated, monkeypatch) -> None:
    location = resolve_store()
    assert (location.kind, location.source) == ("local", "the default")
    assert location.target == str(isolated / "home" / ".local" / "share" / "dacapo-store")
    monkeypatch.setenv("XDG_DATA_HOME", str(isolated / "xdg"))
    assert resolve_store().target == str(isolated / "xdg" / "dacapo-store")


def test_resolution_order(isolated, monkeypatch) -> None:
    home_file = write_options(isolated / "home/.config/dacapo/dacapo.yaml", "runs_base_dir: /from/home\n")
    assert (resolve_store().target, resolve_store().source) == ("/from/home", f"options file {home_file} (runs_base_dir)")
    write_options(isolated / "work/dacapo.yaml", "type: files\nruns_base_dir: /from/cwd\n")
    assert resolve_store().target == "/from/cwd"
    env_file = write_options(isolated / "elsewhere.yaml", "type: files\nruns_base_dir: /from/options-env\n")
    monkeypatch.setenv("DACAPO_OPTIONS_FILE", str(env_file))
    assert resolve_store().target == "/from/options-env"
    monkeypatch.setenv("DACAPO_STORE_URI", "/from/store-env")
    assert (resolve_store().target, resolve_store().source) == ("/from/store-env", "$DACAPO_STORE_URI")
    assert resolve_store("/explicit").source == "the store argument"
    assert resolve_store(Path("~/x")).target == str(isolated / "home" / "x")


def test_mongo_options_file(isolated) -> None:
    write_options(
        isolated / "work/dacapo.yaml",
        "type: mongo\nmongo_db_host: mongodb://u:pw@db.lab:27017\nmongo_db_name: lab\n",
    )
    location = resolve_store()
    assert (location.kind, location.target, location.db_name) == ("mongo", "mongodb://u:pw@db.lab:27017", "lab")
    assert "pw" not in str(location) and "***" in str(location)


def test_database_name_comes_from_the_uri_else_dacapo() -> None:
    assert resolve_store("mongodb://localhost/experiments").db_name == "experiments"
    assert resolve_store("mongodb://localhost").db_name == "dacapo"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("type: sql\n", "type must be 'files' or 'mongo'"),
        ("type: mongo\n", "mongo_db_host must be a mongodb:// URI"),
        ("type: mongo\nmongo_db_host: localhost\n", "mongo_db_host must be a mongodb:// URI"),
        ("type: mongo\nmongo_db_host: mongodb://h\nmongo_db_name: ''\n", "mongo_db_name"),
        ("- a list\n", "must hold a mapping"),
        ("type: [unclosed\n", "cannot read"),
        ("runs_base_dir: ftp://x/y\n", "runs_base_dir"),
    ],
)
def test_bad_options_file_names_the_setting_and_the_file(isolated, text, fragment) -> None:
    path = write_options(isolated / "work/dacapo.yaml", text)
    with pytest.raises(ConfigurationError, match="dacapo.yaml") as error:
        resolve_store()
    assert fragment in str(error.value) and str(path) in str(error.value)


def test_a_named_options_file_that_does_not_exist_is_an_error(isolated, monkeypatch) -> None:
    monkeypatch.setenv("DACAPO_OPTIONS_FILE", str(isolated / "missing.yaml"))
    with pytest.raises(ConfigurationError, match=r"\$DACAPO_OPTIONS_FILE.*missing.yaml"):
        resolve_store()


@pytest.mark.parametrize("value", ["", "   ", "http://example.org/store"])
def test_bad_environment_value_names_the_variable(monkeypatch, value) -> None:
    monkeypatch.setenv("DACAPO_STORE_URI", value)
    if not value:
        assert resolve_store().source == "the default"  # an empty variable counts as unset
        return
    with pytest.raises(ConfigurationError, match=r"\$DACAPO_STORE_URI"):
        resolve_store()


def test_malformed_uri_is_reported_without_its_password() -> None:
    with pytest.raises(ConfigurationError) as error:
        resolve_store("mongodb://admin:hunter2@host:notaport/db")
    assert "hunter2" not in str(error.value) and "the store argument" in str(error.value)


def test_create_stores_opens_the_resolved_backend(isolated, monkeypatch) -> None:
    store = create_weights_store(isolated / "local")
    assert isinstance(store, LocalWeightsStore) and store.basedir == isolated / "local"
    patch_mongomock()
    monkeypatch.setenv("DACAPO_STORE_URI", "mongodb://localhost/resolved")
    with mongomock.patch(servers=(("localhost", 27017),)):
        weights, stats = create_weights_store(), create_stats_store()
    assert isinstance(weights, MongoWeightsStore) and isinstance(stats, MongoStatsStore)
    assert weights.database.db_name == stats.database.db_name == "resolved"


DACAPO_0_3_5_OPTIONS = """\
type: files
runs_base_dir: /from/dacapo
compute_context:
  type: LocalTorch
  config: {}
mongo_db_host: mongodb://localhost:27017
mongo_db_name: dacapo
"""


def test_a_valid_dacapo_options_file_draws_no_warning(isolated) -> None:
    write_options(isolated / "work/dacapo.yaml", DACAPO_0_3_5_OPTIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_store().target == "/from/dacapo"


def test_an_unknown_key_warns_listing_the_known_ones(isolated) -> None:
    path = write_options(isolated / "work/dacapo.yaml", "type: files\nrun_base_dir: /typo\n")
    with pytest.warns(ConfigurationWarning) as caught:
        location = resolve_store()
    assert location.target == str(isolated / "home/.local/share/dacapo-store")  # the typo picks nothing
    (warning,) = caught
    message = str(warning.message)
    assert str(path) in message and "unknown key 'run_base_dir'" in message
    assert "did you mean 'runs_base_dir'?" in message
    assert "compute_context, compute_context_config, mongo_db_host, mongo_db_name, runs_base_dir, type" in message


def test_the_cli_shows_the_warning_as_one_line_and_names_the_store(isolated) -> None:
    options = write_options(isolated / "work/dacapo.yaml", "runs_base_dir: store\nmongo_host: mongodb://x\n")
    LocalStatsStore(isolated / "work/store").delete_validation_scores("nobody")  # a write creates the store
    environment = {**os.environ, "HOME": str(isolated / "home")}
    result = subprocess.run(
        [sys.executable, "-c", "from dacapo_store.cli import main; main()", "du", "--json"],
        cwd=isolated / "work", env=environment, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"warning: options file {options}: unknown key 'mongo_host' is ignored (did you mean 'mongo_db_host'?); "
        "the known keys are compute_context, compute_context_config, mongo_db_host, mongo_db_name, runs_base_dir, type",
        f"store: store (from options file {options} (runs_base_dir))",
    ]
    assert json.loads(result.stdout) == {"runs": [], "total": {"checkpoints": 0, "bytes": 0}}


def test_the_collection_prefix_comes_from_the_environment(monkeypatch) -> None:
    patch_mongomock()
    monkeypatch.setenv("DACAPO_STORE_URI", "mongodb://localhost/lab")
    with mongomock.patch(servers=(("localhost", 27017),)):
        assert create_weights_store().database.collection_prefix == "dacapo_store."
        monkeypatch.setenv("DACAPO_STORE_COLLECTION_PREFIX", "")
        weights, stats = create_weights_store(), create_stats_store()
    assert weights.checkpoints.name == "checkpoints" and stats.scores.name == "validation_scores"
