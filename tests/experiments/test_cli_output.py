"""What ``demo`` and ``train`` tell a newcomer: progress lines where no progress bar can show,
none for a run that is already complete, the CPU threads they use (``--threads``), and
plug-ins found next to their config without ``PYTHONPATH``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from dacapo_store import LocalStatsStore, LocalWeightsStore
from dacapo_store.cli import experiment_commands, main
from dacapo_store.experiments import Run, train_run

from .conftest import tiny_config

PROGRESS_LINE = re.compile(
    r"^iteration (\d+) of (\d+): mean loss \d+\.\d{4}, \d+\.\d it/s; checkpoint stored and validated$"
)


@pytest.fixture(autouse=True)
def no_store_settings(monkeypatch) -> None:
    monkeypatch.delenv("DACAPO_STORE_URI", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def demo(store: Path, *args: str):
    result = CliRunner().invoke(main, ["demo", "--store", str(store), "--device", "cpu", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_without_a_terminal_each_checkpoint_prints_a_line_and_a_complete_run_none(tmp_path) -> None:
    output = demo(tmp_path, "--iterations", "4")
    lines = [match.groups() for line in output.splitlines() if (match := PROGRESS_LINE.match(line))]
    assert lines == [(str(i), "4") for i in (1, 2, 3, 4)]
    again = demo(tmp_path, "--iterations", "4")
    assert "is already trained" in again and not any(PROGRESS_LINE.match(line) for line in again.splitlines())


def test_no_progress_bar_for_a_complete_run(tmp_path, capsys) -> None:
    run = Run(tiny_config(num_iterations=2, validation_interval=2))
    weights, stats = LocalWeightsStore(tmp_path), LocalStatsStore(tmp_path)
    train_run(run, weights, stats, device="cpu", progress=True)
    assert "2/2" in capsys.readouterr().err  # the bar of the training
    train_run(Run(tiny_config(num_iterations=2, validation_interval=2)), weights, stats, device="cpu", progress=True)
    assert capsys.readouterr().err == ""


def test_one_iteration_is_singular(tmp_path) -> None:
    output = demo(tmp_path, "--iterations", "1")
    assert "disks: 1 iteration, a checkpoint stored" in output


@pytest.mark.parametrize(
    "threads, environment, expected",
    [(["--threads", "3"], {}, 3), ([], {"OMP_NUM_THREADS": "1"}, None), ([], {}, experiment_commands.DEFAULT_CPU_THREADS)],
)
def test_threads(tmp_path, monkeypatch, threads, environment, expected) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    torch.set_num_threads(5)  # as torch would have read OMP_NUM_THREADS: it is left alone
    output = demo(tmp_path, "--iterations", "1", *threads)
    expected = 5 if expected is None else expected
    assert f"on cpu, {expected} thread{'s' if expected > 1 else ''}." in output.splitlines()[0]
    assert torch.get_num_threads() == expected


PLUGIN = '''\
from dataclasses import dataclass

import torch

from dacapo_store.experiments import Architecture, ArchitectureConfig


@dataclass(frozen=True, kw_only=True)
class TinyCNNConfig(ArchitectureConfig):
    channels: int = 8

    def build(self) -> "TinyCNN":
        return TinyCNN(self)


class TinyCNN(Architecture):
    def __init__(self, config: TinyCNNConfig) -> None:
        super().__init__()
        self.dims, self.in_channels, self.out_channels, self.downsample_factor = 2, 1, config.channels, 1
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, config.channels, 3, padding=1), torch.nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
'''


@pytest.mark.parametrize("found_in", ["the config's directory", "the working directory"])
def test_a_plugin_next_to_its_config_needs_no_pythonpath(tmp_path, found_in) -> None:
    """The plug-in example of docs/getting-started.md, run as users run it: the console script, whose sys.path
    holds neither directory."""
    project = tmp_path / "project"
    package = project / "my_package_for_test"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(PLUGIN)
    config = tiny_config("tiny-cnn", num_iterations=1, validation_interval=1).to_dict()
    config["architecture_config"] = {"type": "my_package_for_test.nets:TinyCNNConfig", "channels": 4}
    config_dir = project if found_in == "the config's directory" else tmp_path / "configs"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "run.yaml").write_text(yaml.safe_dump(config))
    cwd = tmp_path if found_in == "the config's directory" else project
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "DACAPO_STORE_URI")}
    script = textwrap.dedent(
        """
        import sys
        sys.path[0] = sys.prefix  # as a console script's: the bin directory, not the working directory
        from dacapo_store.cli import main
        main()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "train", str(config_dir / "run.yaml"), "--store", str(tmp_path / "store"),
         "--device", "cpu", "--threads", "1"],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Run 'tiny-cnn' in store" in result.stdout and "re-scored" in result.stdout


def test_the_demo_ends_with_the_command_that_opens_its_dashboard(tmp_path) -> None:
    output = demo(tmp_path / "a store", "--iterations", "1")
    assert output.endswith(
        "\nThe store in a browser (needs pip install 'dacapo-store[ui]'):\n"
        f"  dacapo-store ui --store '{tmp_path / 'a store'}'\n"
    )
