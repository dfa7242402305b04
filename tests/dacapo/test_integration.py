"""DaCapo's own ``train_run``, resume and ``validate`` running on dacapo-store through
``install()``, and what they store seen through dacapo-store's own API and CLI."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dacapo_store import CheckpointNotFoundError, LocalStatsStore, LocalWeightsStore
from dacapo_store.cli import main as cli

from .conftest import Stores, make_stores, require_dacapo, small_run_config, train_run

require_dacapo()

from dacapo.experiments import Run  # noqa: E402
from dacapo.experiments.tasks.evaluators import DummyEvaluationScores  # noqa: E402
from dacapo.store import create_store  # noqa: E402
from dacapo.store.stats_store import StatsStore as DacapoStatsStoreBase  # noqa: E402
from dacapo.store.weights_store import WeightsStore as DacapoWeightsStoreBase  # noqa: E402

from dacapo_store.integrations import dacapo as integration  # noqa: E402
from dacapo_store.integrations.dacapo_adapters import DacapoStatsStore, DacapoWeightsStore  # noqa: E402

PATCHED_MODULES = ("dacapo.store.create_store", "dacapo.train", "dacapo.validate", "dacapo.apply", "dacapo.predict")
NAMES = ("create_weights_store", "create_stats_store")
HEAD = "prediction_head.weight"  # a tensor of the small run's model


def bindings() -> dict[tuple[str, str], object]:
    """Where each of those modules binds either name (not every module imports both)."""
    found = {}
    for module_name in PATCHED_MODULES:
        module = importlib.import_module(module_name)
        for name in NAMES:
            if hasattr(module, name):
                found[(module_name, name)] = getattr(module, name)
    return found


def stored_config(runs_base_dir: Path, **overrides):
    """A small run config, stored in DaCapo's config store (as DaCapo users do)."""
    config = small_run_config(runs_base_dir.parent, **overrides)
    create_store.create_config_store().store_run_config(config)
    return config


def model_state(run) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in run.model.state_dict().items()}


# ---- install / uninstall ---------------------------------------------------------------------


def test_install_rebinds_every_dacapo_binding_and_uninstall_restores_them(tmp_path) -> None:
    before = bindings()
    assert {module for module, _ in before} == set(PATCHED_MODULES)
    stores = make_stores("local", tmp_path)
    integration.install(stores.weights, stores.stats)
    try:
        for (module, name), function in bindings().items():
            assert function is getattr(integration, name), (module, name)
        weights, stats = create_store.create_weights_store(), create_store.create_stats_store()
        assert isinstance(weights, DacapoWeightsStore) and isinstance(weights, DacapoWeightsStoreBase)
        assert isinstance(stats, DacapoStatsStore) and isinstance(stats, DacapoStatsStoreBase)
        assert (weights.weights, weights.stats, stats.stats) == (stores.weights, stores.stats, stores.stats)
        plot = importlib.import_module("dacapo.plot")  # a dacapo module imported after install
        assert plot.create_stats_store is integration.create_stats_store
    finally:
        integration.uninstall()
    assert bindings() == before
    original = before[("dacapo.store.create_store", "create_stats_store")]
    assert importlib.import_module("dacapo.plot").create_stats_store is original


def test_install_again_replaces_the_stores_and_refuses_foreign_ones(tmp_path) -> None:
    first, second = make_stores("local", tmp_path / "a"), make_stores("mongomock", tmp_path / "b")
    try:
        integration.install(first.weights, first.stats)
        integration.install(second.weights, second.stats)
        assert create_store.create_weights_store().weights is second.weights
        with pytest.raises(TypeError, match="weights_store must be a dacapo_store WeightsStore"):
            integration.install(weights_store=object())
        with pytest.raises(TypeError, match="stats_store must be a dacapo_store StatsStore"):
            integration.install(stats_store=second.weights)
    finally:
        integration.uninstall()


def test_without_arguments_the_stores_come_from_dacapo_stores_configuration(dacapo_options, monkeypatch) -> None:
    """``install()`` alone: the store that $DACAPO_STORE_URI (else dacapo.yaml) names, resolved
    whenever DaCapo creates a store; DaCapo itself writes no checkpoint file."""
    store = dacapo_options.parent / "lab-store"
    monkeypatch.setenv("DACAPO_STORE_URI", str(store))
    config = stored_config(dacapo_options)
    integration.install()
    try:
        train_run()(Run(config))
        assert create_store.create_weights_store().weights is create_store.create_weights_store().weights
    finally:
        integration.uninstall()
    assert [c.iteration for c in LocalWeightsStore(store).list_checkpoints(config.name)] == [3, 6]
    assert len(LocalStatsStore(store).retrieve_training_stats(config.name)) == 6
    assert not list(dacapo_options.rglob("checkpoints"))


def test_a_relative_runs_base_dir_follows_the_current_directory(tmp_path, monkeypatch) -> None:
    """``runs_base_dir: runs`` means ``./runs`` wherever DaCapo creates its store (DaCapo's own
    tests change directory per test): a store opened in one directory is not reused in another."""
    options = tmp_path / "dacapo.yaml"
    options.write_text("runs_base_dir: runs\n")
    monkeypatch.setenv("DACAPO_OPTIONS_FILE", str(options))
    monkeypatch.delenv("DACAPO_STORE_URI", raising=False)
    integration.install()
    try:
        found = {}
        for name in ("first", "second", "first"):
            (tmp_path / name).mkdir(exist_ok=True)
            monkeypatch.chdir(tmp_path / name)
            store = create_store.create_weights_store().weights
            assert store.basedir == tmp_path / name / "runs"
            assert found.setdefault(name, store) is store  # opened once per place
    finally:
        integration.uninstall()


def test_a_stale_options_file_variable_falls_back_as_dacapo_does(tmp_path, monkeypatch) -> None:
    """``$DACAPO_OPTIONS_FILE`` naming a deleted file: DaCapo 0.3.5 passes it over for
    ``./dacapo.yaml``; the installed stores follow the same file, with a warning."""
    from dacapo.options import Options

    from dacapo_store import ConfigurationWarning

    (tmp_path / "dacapo.yaml").write_text(f"runs_base_dir: {tmp_path / 'runs'}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DACAPO_OPTIONS_FILE", str(tmp_path / "deleted.yaml"))
    monkeypatch.delenv("DACAPO_STORE_URI", raising=False)
    integration.install()
    try:
        with pytest.warns(ConfigurationWarning, match="deleted.yaml, which is not a file: passed over"):
            store = create_store.create_weights_store().weights
        assert store.basedir == tmp_path / "runs"
        assert Path(Options.instance().runs_base_dir) == tmp_path / "runs"  # DaCapo's own choice
    finally:
        integration.uninstall()


# ---- DaCapo's training loop on dacapo-store -----------------------------------------------------


def test_train_resume_and_validate(installed: Stores, dacapo_options: Path) -> None:
    """One store, two views: DaCapo trains, resumes and validates; dacapo-store's API sees it all."""
    weights, stats = installed.weights, installed.stats
    config = stored_config(dacapo_options, num_iterations=6)
    run = Run(config)
    train_run()(run)

    assert not list(dacapo_options.rglob("checkpoints")), "DaCapo wrote checkpoint files of its own"
    assert weights.latest_iteration(config.name) == 6
    assert [c.iteration for c in weights.list_checkpoints(config.name)] == [3, 6]
    assert torch.equal(weights.retrieve_weights(config.name, 6).model[HEAD], run.model.state_dict()[HEAD])
    first_stats = stats.retrieve_training_stats(config.name)
    assert [s.iteration for s in first_stats] == list(range(6))
    assert [s.loss for s in first_stats] == [s.loss for s in run.training_stats.iteration_stats]

    scores = stats.retrieve_validation_scores(config.name)
    assert {(s.iteration, s.dataset, s.criterion) for s in scores} == {
        (iteration, dataset, criterion)
        for iteration in (3, 6) for dataset in ("val_a", "val_b") for criterion in ("frizz_level", "blipp_score")
    }
    for score in scores:  # each criterion's direction is DaCapo's evaluator's
        assert score.higher_is_better is DummyEvaluationScores.higher_is_better(score.criterion)
        assert score.parameters == {"id": 1}
    assert_scores_match_dacapo(run, scores)
    for dataset in ("val_a", "val_b"):
        for criterion in ("frizz_level", "blipp_score"):
            expected = best_by_hand(scores, dataset, criterion)
            assert weights.retrieve_best(config.name, dataset, criterion) == expected
            assert stats.best_validation_score(config.name, dataset, criterion).iteration == expected

    # resume: a longer run of the same name continues from checkpoint 6
    resumed = Run(small_run_config(dacapo_options.parent, num_iterations=9))
    train_run()(resumed)
    assert [c.iteration for c in weights.list_checkpoints(config.name)] == [3, 6, 9]
    assert stats.retrieve_training_stats(config.name)[:6] == first_stats  # the history is kept
    assert [s.iteration for s in stats.retrieve_training_stats(config.name)] == list(range(9))
    assert {s.iteration for s in stats.retrieve_validation_scores(config.name)} == {3, 6, 9}

    # DaCapo's validate(run_name, iteration) re-validates a stored checkpoint
    validate = importlib.import_module("dacapo.validate")
    validate.validate(config.name, 3)
    with pytest.raises(FileNotFoundError):
        validate.validate(config.name, 4)
    # and validate_run on a Run of ours: what DaCapo computed is what is stored
    fresh = Run(config)
    weights.load_weights(fresh, 6)
    validate.validate_run(fresh, 6)
    assert_scores_match_dacapo(fresh, stats.retrieve_validation_scores(config.name), iterations={6})


def test_resume_with_weights_behind_stats(installed: Stores, dacapo_options: Path) -> None:
    """The latest checkpoint was removed: DaCapo resumes from the one before and replaces the
    later stats, as with its own stores."""
    weights, stats = installed.weights, installed.stats
    config = stored_config(dacapo_options, num_iterations=6)
    train_run()(Run(config))
    weights.remove(config.name, 6)
    run = Run(small_run_config(dacapo_options.parent, num_iterations=9))
    train_run()(run)
    assert [c.iteration for c in weights.list_checkpoints(config.name)] == [3, 6, 9]
    stored = stats.retrieve_training_stats(config.name)
    assert [s.iteration for s in stored] == list(range(9))
    assert [s.loss for s in stored[3:]] == [s.loss for s in run.training_stats.iteration_stats[3:]]
    assert {s.iteration for s in stats.retrieve_validation_scores(config.name)} == {3, 6, 9}


def test_dacapo_reads_back_its_scores_in_its_own_form(installed: Stores, dacapo_options: Path) -> None:
    config = stored_config(dacapo_options, num_iterations=6)
    run = Run(config)
    train_run()(run)
    dacapo_stats = create_store.create_stats_store()
    assert dacapo_stats.retrieve_validation_iteration_scores(config.name) == run.validation_scores.scores
    assert dacapo_stats.retrieve_training_stats(config.name) == run.training_stats
    # best, DaCapo's way (the dataset as an object, as dacapo.apply passes it)
    dacapo_weights = create_store.create_weights_store()
    dataset = run.datasplit.validate[0]
    iteration = dacapo_weights.retrieve_best(config.name, dataset, "frizz_level")
    assert iteration == installed.weights.retrieve_best(config.name, dataset.name, "frizz_level")
    fresh = Run(config)
    dacapo_weights.load_best(fresh, dataset, "frizz_level")
    best = dacapo_weights.retrieve_weights(config.name, iteration)
    assert torch.equal(fresh.model.state_dict()[HEAD], best.model[HEAD])


def test_dacapo_store_cli_reads_what_dacapo_trained(tmp_path, dacapo_options: Path) -> None:
    stores = make_stores("local", tmp_path)
    integration.install(stores.weights, stores.stats)
    try:
        config = stored_config(dacapo_options, num_iterations=6)
        train_run()(Run(config))
    finally:
        integration.uninstall()
    runner = CliRunner()
    result = runner.invoke(cli, ["best", config.name, "val_b", "blipp_score", "--store", stores.location, "--json"])
    assert result.exit_code == 0, result.output
    best = json.loads(result.stdout)
    assert best["iteration"] == stores.weights.retrieve_best(config.name, "val_b", "blipp_score")
    assert (best["higher_is_better"], best["parameters"], best["checkpoint_size"] > 0) == (False, {"id": 1}, True)
    result = runner.invoke(cli, ["plot", config.name, "-o", str(tmp_path / "plot.png"), "--store", stores.location])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(cli, ["runs", "--store", stores.location, "--json"])
    assert json.loads(result.stdout)[0]["latest_iteration"] == 6


def test_store_weights_replaces_a_stored_iteration(installed: Stores, dacapo_options: Path) -> None:
    """DaCapo saves an iteration again (e.g. checkpoint 0 before every training): it replaces
    the stored one."""
    run = Run(small_run_config(dacapo_options.parent))
    dacapo_weights = create_store.create_weights_store()
    dacapo_weights.store_weights(run, 0)
    with torch.no_grad():
        for parameter in run.model.parameters():
            parameter.add_(1.0)
    dacapo_weights.store_weights(run, 0)
    assert torch.equal(dacapo_weights.retrieve_weights(run.name, 0).model[HEAD], run.model.state_dict()[HEAD])
    assert [c.iteration for c in installed.weights.list_checkpoints(run.name)] == [0]
    dacapo_weights.remove(run.name, 0)
    assert dacapo_weights.latest_iteration(run.name) is None
    with pytest.raises(CheckpointNotFoundError):
        dacapo_weights.retrieve_weights(run.name, 0)


# ---- helpers ------------------------------------------------------------------------------------


def assert_scores_match_dacapo(run, scores, iterations=None) -> None:
    """Every score DaCapo holds in ``run.validation_scores`` is stored under its names."""
    stored = {(s.iteration, s.dataset, s.criterion, json.dumps(s.parameters, sort_keys=True)): s.value for s in scores}
    validation = run.validation_scores
    for entry in validation.scores:
        if iterations is not None and entry.iteration not in iterations:
            continue
        for dataset, per_parameters in zip(validation.datasets, entry.scores, strict=True):
            for parameters, values in zip(validation.parameters, per_parameters, strict=True):
                for criterion, value in zip(validation.criteria, values, strict=True):
                    key = (entry.iteration, dataset.name, criterion, json.dumps({"id": parameters.id}))
                    assert stored[key] == pytest.approx(value, nan_ok=True), key


def best_by_hand(scores, dataset: str, criterion: str) -> int:
    rows = [s for s in scores if s.dataset == dataset and s.criterion == criterion and not math.isnan(s.value)]
    sign = 1 if rows[0].higher_is_better else -1
    return max(rows, key=lambda s: (sign * s.value, -s.iteration)).iteration
