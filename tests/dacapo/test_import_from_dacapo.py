"""Importing runs that DaCapo wrote with its own stores (its LocalWeightsStore, FileStatsStore,
MongoStatsStore and config stores), then training on from dacapo-store."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dacapo_store import LocalStatsStore, LocalWeightsStore, MongoStatsStore, MongoWeightsStore
from dacapo_store.cli import main as cli
from dacapo_store.testing.contract import assert_state_equal
from dacapo_store.testing.mongomock_support import mongomock_client

from .conftest import require_dacapo, small_run_config, train_run

require_dacapo()

from dacapo.experiments import Run  # noqa: E402
from dacapo.store import create_store, mongo_stats_store  # noqa: E402
from dacapo.store.file_config_store import FileConfigStore  # noqa: E402
from dacapo.store.local_weights_store import LocalWeightsStore as DacapoLocalWeightsStore  # noqa: E402

from dacapo_store.integrations import dacapo as integration  # noqa: E402
from dacapo_store.integrations.dacapo_adapters import DacapoStatsStore, layout_from_config_store  # noqa: E402
from dacapo_store.integrations.dacapo_import import MongoStatsSource, import_dacapo_runs  # noqa: E402


@pytest.fixture
def dacapo_trained(dacapo_options: Path):
    """A run trained by DaCapo with its own stores (checkpoints 3 and 6, validated at both)."""
    config = small_run_config(dacapo_options.parent, num_iterations=6)
    create_store.create_config_store().store_run_config(config)
    run = Run(config)
    train_run()(run)
    assert sorted(p.name for p in (dacapo_options / config.name / "checkpoints" / "iterations").iterdir()) == ["3", "6"]
    return run


def test_a_run_dacapo_trained_imports_completely_and_trains_on(dacapo_trained, dacapo_options: Path, tmp_path) -> None:
    run = dacapo_trained
    store = tmp_path / "store"
    result = CliRunner().invoke(cli, ["import-dacapo", str(dacapo_options), "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert f"run configs in {dacapo_options / 'configs'}" in result.output
    weights, stats = LocalWeightsStore(store), LocalStatsStore(store)

    dacapo_weights = DacapoLocalWeightsStore(dacapo_options)
    for iteration in (3, 6):
        theirs = dacapo_weights.retrieve_weights(run.name, iteration)
        ours = weights.retrieve_weights(run.name, iteration)
        assert_state_equal(ours.model, theirs.model)
        assert_state_equal(ours.optimizer, theirs.optimizer)
    dacapo_stats = create_store.create_stats_store()  # DaCapo's own FileStatsStore
    ours = DacapoStatsStore(stats, layout_from_config_store(create_store.create_config_store()))
    assert ours.retrieve_training_stats(run.name) == dacapo_stats.retrieve_training_stats(run.name)
    theirs = dacapo_stats.retrieve_validation_iteration_scores(run.name)
    assert ours.retrieve_validation_iteration_scores(run.name) == theirs
    assert {s.higher_is_better for s in stats.retrieve_validation_scores(run.name, criterion="blipp_score")} == {False}

    again = CliRunner().invoke(cli, ["import-dacapo", str(dacapo_options), "--store", str(store)])
    assert "nothing new to import: 2 checkpoint(s), 6 training stat(s) and 8 score(s)" in again.output

    # the one line: DaCapo continues the imported run from dacapo-store
    integration.install(weights, stats)
    try:
        train_run()(Run(small_run_config(dacapo_options.parent, num_iterations=9)))
    finally:
        integration.uninstall()
    assert [c.iteration for c in weights.list_checkpoints(run.name)] == [3, 6, 9]
    assert [s.iteration for s in stats.retrieve_training_stats(run.name)] == list(range(9))
    assert sorted(p.name for p in (dacapo_options / run.name / "checkpoints" / "iterations").iterdir()) == ["3", "6"]


def test_stats_from_dacapos_mongo_store(dacapo_options: Path, monkeypatch) -> None:
    """DaCapo's MongoStatsStore (on mongomock) as the source, named by DaCapo's config files."""
    client = mongomock_client()
    monkeypatch.setattr(mongo_stats_store, "MongoClient", lambda host: client)
    config = small_run_config(dacapo_options.parent, num_iterations=6)
    create_store.create_config_store().store_run_config(config)
    run = Run(config)
    train_run()(run)  # DaCapo's file stores; its scores copied to its Mongo store below
    dacapo_mongo = mongo_stats_store.MongoStatsStore("mongodb://lab", "lab")
    dacapo_mongo.store_training_stats(run.name, run.training_stats)
    dacapo_mongo.store_validation_iteration_scores(run.name, run.validation_scores)

    target = mongomock_client()
    weights, stats = MongoWeightsStore(target), MongoStatsStore(target)
    layouts = layout_from_config_store(FileConfigStore(dacapo_options / "configs"))
    report = import_dacapo_runs(dacapo_options, weights, stats, run.name, [MongoStatsSource(client["lab"])], layouts)
    assert not report.failures
    (imported,) = report.runs
    assert (imported.checkpoints_imported, imported.training_stats_imported, imported.scores_imported) == (2, 6, 8)
    ours = DacapoStatsStore(stats, layouts)
    theirs = dacapo_mongo.retrieve_validation_iteration_scores(run.name)
    assert ours.retrieve_validation_iteration_scores(run.name) == theirs
    assert ours.retrieve_training_stats(run.name) == dacapo_mongo.retrieve_training_stats(run.name)
