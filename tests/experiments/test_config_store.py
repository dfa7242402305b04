"""The run config store: configs by name, in the same database as the weights and stats."""

from __future__ import annotations

import pytest

from dacapo_store import LocalWeightsStore
from dacapo_store.experiments import (
    RunConfig,
    RunConfigConflictError,
    RunConfigNotFoundError,
    create_run_config_store,
)

from .conftest import tiny_config


def test_store_retrieve_and_list(run_config_store):
    first, second = tiny_config("first"), tiny_config("second", num_iterations=8)
    run_config_store.store_run_config(second.to_dict())
    run_config_store.store_run_config(first.to_dict())
    assert run_config_store.list_run_configs() == ["first", "second"]
    assert RunConfig.from_dict(run_config_store.retrieve_run_config("second")) == second


def test_same_config_again_is_a_no_op(run_config_store):
    run_config_store.store_run_config(tiny_config().to_dict())
    run_config_store.store_run_config(tiny_config().to_dict())
    assert run_config_store.list_run_configs() == ["tiny"]


def test_different_config_under_a_taken_name_is_a_clear_error(run_config_store):
    run_config_store.store_run_config(tiny_config().to_dict())
    changed = tiny_config(num_iterations=60, architecture_config={"type": "unet", "num_fmaps": 3, "depth": 2})
    with pytest.raises(RunConfigConflictError) as raised:
        run_config_store.store_run_config(changed.to_dict())
    assert isinstance(raised.value, ValueError)
    message = str(raised.value)
    assert "run 'tiny' already has a different config" in message
    assert "num_iterations: stored 6, new 60" in message
    assert "architecture_config.num_fmaps: stored 2, new 3" in message
    assert RunConfig.from_dict(run_config_store.retrieve_run_config("tiny")) == tiny_config()


def test_unknown_name(run_config_store):
    with pytest.raises(RunConfigNotFoundError, match="no run config named 'nothing'"):
        run_config_store.retrieve_run_config("nothing")


def test_bad_configs_are_refused(run_config_store):
    with pytest.raises(ValueError, match="must not start with '\\$'"):
        run_config_store.store_run_config({"name": "$where"})
    with pytest.raises(TypeError, match="run name must be a str"):
        run_config_store.store_run_config({"num_iterations": 3})
    with pytest.raises(ValueError):
        run_config_store.store_run_config({"name": "nan", "value": float("nan")})
    assert run_config_store.list_run_configs() == []


def test_unstorable_configs_are_refused_naming_the_field(run_config_store):
    looped: dict = {"name": "looped", "trainer_config": {}}
    looped["trainer_config"]["again"] = looped["trainer_config"]
    deep: dict = {"name": "deep", "task_config": {}}
    inner = deep["task_config"]
    for _ in range(500):
        inner["a"] = {}
        inner = inner["a"]
    cases = [
        ({"name": "bad\ud800"}, "run name is not valid Unicode"),
        ({"name": "ok", "task_config": {"type": "x\udc80"}}, "run config['task_config']['type'] is not valid Unicode"),
        ({"name": "ok", "task_config": {"\udc80": 1}}, "a key of run config['task_config'] is not valid Unicode"),
        (looped, "run config['trainer_config']['again'] contains itself"),
        (deep, "run config['task_config']['a']['a']"),
    ]
    for config, message in cases:
        with pytest.raises(ValueError) as raised:
            run_config_store.store_run_config(config)
        assert type(raised.value) is ValueError and str(raised.value).startswith(message), raised.value
    assert run_config_store.list_run_configs() == []


def test_names_are_values_never_field_names(weights_store, run_config_store):
    name = "odd.name with $ and dots"
    run_config_store.store_run_config(tiny_config(name).to_dict())
    if isinstance(weights_store, LocalWeightsStore):
        rows = weights_store.catalog.query("SELECT name FROM run_configs")
        assert [row["name"] for row in rows] == [name]
    else:
        document = run_config_store.runs.find_one({}, projection={"_id": False})
        assert set(document) == {"name", "config", "created"}
        assert document["name"] == name
    assert run_config_store.retrieve_run_config(name)["name"] == name


def test_create_run_config_store_follows_the_store_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("DACAPO_STORE_URI", str(tmp_path / "from_env"))
    create_run_config_store().store_run_config(tiny_config().to_dict())
    assert create_run_config_store(tmp_path / "from_env").list_run_configs() == ["tiny"]
    assert create_run_config_store(tmp_path / "elsewhere").list_run_configs() == []
    assert (tmp_path / "from_env" / "catalog.sqlite3").is_file()
