"""``dacapo-store demo`` and ``dacapo-store train``, on a local directory and on MongoDB
(mongomock serving a mongodb:// URI, so the CLI runs exactly as users run it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mongomock
import pytest
import torch
import yaml
from click.testing import CliRunner

from dacapo_store import create_stats_store, create_weights_store
from dacapo_store.cli import main
from dacapo_store.experiments import RunConfig, create_run_config_store
from dacapo_store.testing.mongomock_support import patch_mongomock

EXAMPLE = Path(__file__).parents[2] / "examples" / "run_config.yaml"
MONGO_URI = "mongodb://localhost:27017/experiments"


@pytest.fixture(params=["local", "mongomock"])
def store(request, tmp_path, monkeypatch) -> Iterator[str]:
    """A ``--store`` value; the environment names no other store."""
    monkeypatch.delenv("DACAPO_STORE_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    patch_mongomock()
    with mongomock.patch(servers=(("localhost", 27017),)):
        yield MONGO_URI


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_demo_trains_reports_and_continues(store):
    result = cli("demo", "--store", store, "--iterations", "4", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "Run 'demo-4' in store" in result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("dataset"))
    assert lines[header].split()[:4] == ["dataset", "criterion", "best", "iteration"]
    rows = [line.split() for line in lines[header + 1 : header + 7]]
    assert [row[:2] for row in rows] == [
        [dataset, criterion] for dataset in ("validate_0", "validate_1") for criterion in ("f1_score", "iou", "voi")
    ]
    assert all(row[-1] == "ok" for row in rows)
    weights_store, stats_store = create_weights_store(store), create_stats_store(store)
    for row in rows:
        best = stats_store.best_validation_score("demo-4", row[0], row[1])
        assert int(row[2]) == best.iteration == weights_store.retrieve_best("demo-4", row[0], row[1])
        assert float(row[4]) == pytest.approx(best.value, abs=5e-5)
    assert [c.iteration for c in weights_store.list_checkpoints("demo-4")] == [1, 2, 3, 4]

    again = cli("demo", "--store", store, "--iterations", "4")
    assert again.exit_code == 0, again.output
    assert "Run 'demo-4' is already trained" in again.output
    assert [c.iteration for c in weights_store.list_checkpoints("demo-4")] == [1, 2, 3, 4]

    longer = cli("demo", "--store", store, "--iterations", "6")
    assert longer.exit_code == 0, longer.output
    assert "Run 'demo-6' in store" in longer.output
    assert create_run_config_store(store).list_run_configs() == ["demo-4", "demo-6"]


def test_demo_stores_at_round_iterations(store):
    result = cli("demo", "--store", store, "--iterations", "25", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert [c.iteration for c in create_weights_store(store).list_checkpoints("demo-25")] == [5, 10, 15, 20, 25]


@pytest.mark.parametrize(
    "iterations, interval", [(1, 1), (6, 1), (25, 5), (150, 25), (250, 50), (600, 100), (1000, 200), (10_000, 2000)]
)
def test_the_demo_interval_is_round_with_at_most_six_checkpoints(iterations, interval):
    from dacapo_store.experiments.demo import demo_run_config

    assert demo_run_config(iterations=iterations).validation_interval == interval


def test_interrupted_demo_continues(store, monkeypatch):
    from dacapo_store.experiments.plugins.gradient_trainer import GradientTrainer

    original = GradientTrainer.iterate

    def interrupted(self, iterations, *args, **kwargs):
        for stats in original(self, iterations, *args, **kwargs):
            yield stats
            if stats.iteration == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(GradientTrainer, "iterate", interrupted)
    result = CliRunner().invoke(main, ["demo", "--store", store, "--iterations", "4", "--name", "ctrl-c"])
    assert result.exit_code == 130
    assert "run the same command again to continue" in result.output
    monkeypatch.setattr(GradientTrainer, "iterate", original)
    again = cli("demo", "--store", store, "--iterations", "4", "--name", "ctrl-c")
    assert again.exit_code == 0, again.output
    assert "Continuing run 'ctrl-c' from its checkpoint 2." in again.output
    assert create_weights_store(store).latest_iteration("ctrl-c") == 4


def test_demo_uses_the_default_local_store(tmp_path, monkeypatch):
    monkeypatch.delenv("DACAPO_STORE_URI", raising=False)
    monkeypatch.delenv("DACAPO_OPTIONS_FILE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    result = cli("demo", "--iterations", "2")
    assert result.exit_code == 0, result.output
    default = tmp_path / "data" / "dacapo-store"
    assert f"in store {default} (from the default)" in result.output
    assert create_weights_store(default).latest_iteration("demo-2") == 2


def test_demo_refuses_an_unavailable_device(store):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = cli("demo", "--store", store, "--iterations", "2", "--device", "cuda")
    assert result.exit_code == 1
    assert "error: device 'cuda' requested, but CUDA is not available here" in result.output


def test_example_config_is_valid():
    config = RunConfig.from_yaml_file(EXAMPLE)
    assert config.name == "example-unet-2d"
    assert config.architecture_config.type_name == "unet"
    assert config.num_iterations % config.validation_interval == 0


def test_train_runs_a_yaml_config_and_resumes(store, tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text())
    data.update(name="from-yaml", num_iterations=3, validation_interval=2)
    data["architecture_config"]["num_fmaps"] = 2
    data["datasplit_config"].update(shape=[64, 64], num_objects=6)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    result = cli("train", str(path), "--store", store)
    assert result.exit_code == 0, result.output
    assert "re-scored" in result.output and "load_best(" in result.output
    assert [c.iteration for c in create_weights_store(store).list_checkpoints("from-yaml")] == [2, 3]
    stored = RunConfig.from_dict(create_run_config_store(store).retrieve_run_config("from-yaml"))
    assert stored == RunConfig.from_yaml_file(path)

    again = cli("train", str(path), "--store", store)
    assert again.exit_code == 0 and "is already trained" in again.output

    data["num_iterations"] = 5
    path.write_text(yaml.safe_dump(data))
    conflict = cli("train", str(path), "--store", store)
    assert conflict.exit_code == 1
    assert "error: run 'from-yaml' already has a different config stored (num_iterations: stored 3, new 5)" in (
        conflict.output
    )


def test_train_reports_a_bad_config_in_one_line(store, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nnum_iterations: many\n")
    result = cli("train", str(path), "--store", store)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "bad.yaml" in result.output
    assert len(result.output.strip().splitlines()) == 1


def nan_iou(monkeypatch):
    """Make every ``iou`` score NaN, so (dataset, iou) has no best checkpoint."""
    from dacapo_store.experiments.plugins.binary_segmentation import BinarySegmentationTask

    original = BinarySegmentationTask.evaluate

    def evaluate(self, *args, **kwargs):
        return {**original(self, *args, **kwargs), "iou": float("nan")}

    monkeypatch.setattr(BinarySegmentationTask, "evaluate", evaluate)


def test_demo_reports_a_criterion_with_only_nan_scores(store, monkeypatch):
    nan_iou(monkeypatch)
    result = cli("demo", "--store", store, "--iterations", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    for dataset in ("validate_0", "validate_1"):
        assert f"{dataset} / iou: no best checkpoint (no non-NaN score)" in result.output
        assert f"{dataset}  f1_score" in result.output
    assert "load_best('validate_0', 'f1_score') loaded checkpoint" in result.output
    assert "the same weights as retrieve_weights." in result.output


def test_demo_keep_last_prunes_while_training(store):
    result = cli("demo", "--store", store, "--iterations", "4", "--keep-last", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    weights_store, stats_store = create_weights_store(store), create_stats_store(store)
    best = {
        stats_store.best_validation_score("demo-4", dataset, criterion).iteration
        for dataset in ("validate_0", "validate_1")
        for criterion in ("f1_score", "iou", "voi")
    }
    kept = [c.iteration for c in weights_store.list_checkpoints("demo-4")]
    assert kept == sorted(best | {4}) and len(kept) < 4  # this demo's best are not all different
    assert {s.iteration for s in stats_store.retrieve_validation_scores("demo-4")} == {1, 2, 3, 4}


@pytest.mark.parametrize("where", ["ExperimentStores.open", "evaluate", "best_report"])
def test_ctrl_c_anywhere_exits_130_with_one_line(store, monkeypatch, where):
    from dacapo_store.cli import experiment_commands

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "ExperimentStores.open":
        monkeypatch.setattr(experiment_commands.ExperimentStores, "open", interrupted)
    else:
        monkeypatch.setattr(experiment_commands, where, interrupted)
    result = CliRunner().invoke(main, ["demo", "--store", store, "--iterations", "2", "--device", "cpu"])
    assert result.exit_code == 130
    assert result.output.splitlines()[-1] == (
        "Interrupted: run the same command again to continue from the last checkpoint."
    )
    assert "Aborted" not in result.output and "Traceback" not in result.output


def test_weights_that_do_not_reproduce_their_score_fail_with_error_line(store, monkeypatch):
    import dataclasses

    from dacapo_store.cli import experiment_commands

    original = experiment_commands.best_report

    def wrong_weights(*args, **kwargs):
        report = original(*args, **kwargs)
        return dataclasses.replace(report, load_best=dataclasses.replace(report.load_best, same_weights=False))

    monkeypatch.setattr(experiment_commands, "best_report", wrong_weights)
    result = cli("demo", "--store", store, "--iterations", "2", "--device", "cpu")
    assert result.exit_code == 1
    assert "MISMATCH" in result.output
    assert result.output.splitlines()[-1] == (
        "error: the store returned weights that do not reproduce their stored best score"
    )


def test_demo_and_train_store_checkpoints_in_the_background_on_request(store):
    result = cli("demo", "--store", store, "--iterations", "3", "--async-checkpoint", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "re-scored" in result.output
    weights_store, stats_store = create_weights_store(store), create_stats_store(store)
    assert [c.iteration for c in weights_store.list_checkpoints("demo-3")] == [1, 2, 3]
    assert {s.iteration for s in stats_store.retrieve_validation_scores("demo-3")} == {1, 2, 3}
    assert "--async-checkpoint" in cli("train", "--help").output
