"""Typed configs: checking, dict/YAML round trips, and the plug-in registry."""

from __future__ import annotations

import importlib.metadata
import re
import textwrap
from dataclasses import dataclass

import pytest

from dacapo_store.experiments import (
    ArchitectureConfig,
    CheckpointStartConfig,
    ConfigError,
    NpyDataSplitConfig,
    RunConfig,
    UNetConfig,
    register,
)
from dacapo_store.experiments import registry
from dacapo_store.experiments.plugins.unet import UNet

from .conftest import tiny_config


@pytest.fixture
def clean_registry(monkeypatch):
    """Registrations made by a test are forgotten after it."""
    monkeypatch.setattr(registry, "_REGISTRY", {kind: dict(types) for kind, types in registry._REGISTRY.items()})


def test_run_config_round_trips_through_dict_and_yaml():
    config = tiny_config(start_config=CheckpointStartConfig(run="other", dataset="validate_0", criterion="iou"))
    assert RunConfig.from_dict(config.to_dict()) == config
    assert RunConfig.from_yaml(config.to_yaml()) == config
    data = config.to_dict()
    assert data["architecture_config"]["type"] == "unet"
    assert data["start_config"] == {
        "type": "checkpoint", "run": "other", "iteration": None, "dataset": "validate_0", "criterion": "iou"
    }


def test_yaml_values_are_converted_where_lossless():
    config = RunConfig.from_yaml(
        textwrap.dedent(
            """
            name: converted
            task_config: {type: binary_segmentation, thresholds: [0.5]}
            architecture_config: {type: unet, dims: 3}
            trainer_config: {type: gradient, learning_rate: 1e-3, input_shape: [8, 8, 8]}
            datasplit_config: {type: synthetic, shape: [16, 16, 16]}
            num_iterations: 10
            validation_interval: 5
            """
        )
    )
    assert config.trainer_config.learning_rate == 0.001  # YAML reads 1e-3 as a string
    assert config.trainer_config.input_shape == (8, 8, 8)
    assert config.start_config is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_iterations": "ten"}, "num_iterations must be int"),
        ({"num_iterations": 0}, "num_iterations must be >= 1"),
        ({"validation_interval": 1.5}, "validation_interval must be int"),
        ({"name": ""}, "run name must not be empty"),
        ({"architecture_config": {"type": "unet", "dims": 4}}, "dims must be 2 or 3"),
        ({"architecture_config": {"type": "unet", "depth": True}}, "depth must be int"),
        ({"architecture_config": {"type": "unet", "width": 3}}, "has no field(s) ['width']"),
        ({"architecture_config": {"type": "no_such_net"}}, "unknown architecture type 'no_such_net'"),
        ({"architecture_config": {"depth": 2}}, "needs a 'type'"),
        ({"trainer_config": {"type": "gradient", "optimizer": "sgd"}}, "optimizer must be one of"),
        ({"task_config": {"type": "binary_segmentation", "thresholds": [1.5]}}, "strictly between 0 and 1"),
        ({"start_config": {"type": "checkpoint", "run": "a", "iteration": 3, "criterion": "iou"}}, "either iteration"),
        ({"start_config": {"type": "checkpoint", "run": "a"}}, "either iteration"),
    ],
)
def test_bad_values_fail_naming_the_field(change, message):
    data = {**tiny_config().to_dict(), **change}
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig.from_dict(data)


def test_missing_required_field_is_named():
    data = tiny_config().to_dict()
    del data["num_iterations"]
    with pytest.raises(ConfigError, match=r"missing the required field\(s\) \['num_iterations'\]"):
        RunConfig.from_dict(data)


def test_invalid_yaml_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        RunConfig.from_yaml_file(path)


def test_npy_datasplit_config_nests_dataset_configs():
    config = NpyDataSplitConfig.from_dict(
        {"train": [{"name": "a", "raw": "a.npy", "gt": "a_gt.npy"}], "validate": []}
    )
    assert config.train[0].name == "a"
    assert config.to_dict()["train"] == [{"name": "a", "raw": "a.npy", "gt": "a_gt.npy"}]


def write_plugin_module(tmp_path, monkeypatch, module: str) -> None:
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from dacapo_store.experiments import ArchitectureConfig, UNetConfig

            @dataclass(frozen=True, kw_only=True)
            class WideUNetConfig(ArchitectureConfig):
                width: int = 3

                def build(self):
                    return UNetConfig(num_fmaps=self.width, depth=2).build()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_plugin_by_import_path(tmp_path, monkeypatch, clean_registry):
    write_plugin_module(tmp_path, monkeypatch, "my_plugins_by_path")
    config = RunConfig.from_dict(
        {**tiny_config().to_dict(), "architecture_config": {"type": "my_plugins_by_path:WideUNetConfig", "width": 5}}
    )
    assert isinstance(config.architecture_config.build(), UNet)
    assert config.to_dict()["architecture_config"]["type"] == "my_plugins_by_path:WideUNetConfig"
    assert RunConfig.from_dict(config.to_dict()) == config


def test_plugin_by_entry_point(tmp_path, monkeypatch, clean_registry):
    write_plugin_module(tmp_path, monkeypatch, "my_plugins_by_entry_point")
    entry = importlib.metadata.EntryPoint(
        name="wide_unet", value="my_plugins_by_entry_point:WideUNetConfig", group="dacapo_store.architectures"
    )
    real = importlib.metadata.entry_points

    def entry_points(**selection):
        if selection.get("group") == entry.group:
            return importlib.metadata.EntryPoints([entry]).select(**selection)
        return real(**selection)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert "wide_unet" in registry.registered_types("architecture")
    config = RunConfig.from_dict({**tiny_config().to_dict(), "architecture_config": {"type": "wide_unet"}})
    assert config.architecture_config.width == 3
    assert config.to_dict()["architecture_config"]["type"] == "wide_unet"


def test_register_in_process(clean_registry):
    @register("architecture", "registered_in_test")
    @dataclass(frozen=True, kw_only=True)
    class InProcessConfig(ArchitectureConfig):
        def build(self):
            return UNetConfig().build()

    config = RunConfig.from_dict(
        {**tiny_config().to_dict(), "architecture_config": {"type": "registered_in_test"}}
    )
    assert isinstance(config.architecture_config, InProcessConfig)
    with pytest.raises(ValueError, match="already registered"):
        register("architecture", "registered_in_test")(UNetConfig)
    with pytest.raises(TypeError, match="must derive from TaskConfig"):
        register("task", "not_a_task")(UNetConfig)


def test_import_path_must_name_a_config_of_the_right_kind():
    with pytest.raises(ConfigError, match="does not derive from ArchitectureConfig"):
        registry.plugin_class("architecture", "dacapo_store.experiments:BinarySegmentationConfig")
    with pytest.raises(ConfigError, match="cannot import plug-in"):
        registry.plugin_class("architecture", "no_such_module_here:Config")
