"""dacapo-store and DaCapo's own MongoDB stores in one database: neither disturbs the other.

DaCapo's ``MongoStatsStore`` and ``MongoConfigStore`` (the real ones, on mongomock) own the
collections ``training_stats``, ``validation_scores``, ``runs``, ``tasks``, ... with their
unique indexes. dacapo-store's collections all start with ``dacapo_store.``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import yaml

from dacapo_store import MongoStatsStore, MongoWeightsStore, TrainingIterationStats, Weights
from dacapo_store.testing.mongomock_support import mongomock_client

from .conftest import require_dacapo, small_run_config, train_run

require_dacapo()

from dacapo.experiments import Run, TrainingStats, ValidationIterationScores, ValidationScores  # noqa: E402
from dacapo.experiments import TrainingIterationStats as DacapoIterationStats  # noqa: E402
from dacapo.experiments.tasks.evaluators import DummyEvaluationScores  # noqa: E402
from dacapo.experiments.tasks.post_processors import ArgmaxPostProcessorParameters  # noqa: E402
from dacapo.store import mongo_config_store, mongo_stats_store  # noqa: E402

from dacapo_store.integrations import dacapo as integration  # noqa: E402
from dacapo_store.integrations.dacapo_adapters import DacapoStatsStore  # noqa: E402

HOST, DB = "mongodb://lab-server:27017", "lab"
RUN = "shared_run"


@pytest.fixture
def client(monkeypatch):
    """One mongomock server that DaCapo's own Mongo stores connect to as well."""
    client = mongomock_client()
    for module in (mongo_stats_store, mongo_config_store):
        monkeypatch.setattr(module, "MongoClient", lambda host, client=client: client)
    return client


def dacapo_training_stats(until: int) -> TrainingStats:
    return TrainingStats([DacapoIterationStats(iteration=i, loss=1.0 / (i + 1), time=0.1) for i in range(until)])


def dacapo_validation_scores(*iterations: int) -> ValidationScores:
    class Dataset:
        name = "validate"

    return ValidationScores(
        [ArgmaxPostProcessorParameters(id=1)],
        [Dataset()],
        DummyEvaluationScores(),
        [ValidationIterationScores(i, [[[i / 1000, 1 - i / 1000]]]) for i in iterations],
    )


def snapshot(database) -> dict:
    """DaCapo's collections: their indexes and documents."""
    return {
        name: (database[name].index_information(), list(database[name].find({}, projection={"_id": False})))
        for name in database.list_collection_names()
        if not name.startswith("dacapo_store.")
    }


def test_both_keep_working_on_one_database(client, tmp_path: Path) -> None:
    # DaCapo first: its indexes built, its stats and a run config stored
    dacapo_stats = mongo_stats_store.MongoStatsStore(HOST, DB)
    dacapo_configs = mongo_config_store.MongoConfigStore(HOST, DB)
    config = small_run_config(tmp_path, name=RUN)
    dacapo_configs.store_run_config(config)
    dacapo_stats.store_training_stats(RUN, dacapo_training_stats(10))
    dacapo_stats.store_validation_iteration_scores(RUN, dacapo_validation_scores(100))
    before = snapshot(client[DB])
    assert {"runs", "training_stats", "validation_scores"} <= set(before)

    # dacapo-store opens on the same database and writes the same run name
    weights, stats = MongoWeightsStore(client, DB), MongoStatsStore(client, DB)
    weights.put_weights(RUN, 100, Weights({"w": torch.ones(3)}, None))
    weights.put_weights(RUN, 100, Weights({"w": torch.zeros(3)}, None), overwrite=True)
    stats.store_training_stats(RUN, [TrainingIterationStats(i, 0.5, 0.2) for i in range(5)])
    stats.store_validation_scores(RUN, 100, "validate", {"f1": 0.9}, {"f1": True}, {"threshold": 0.5})
    assert snapshot(client[DB]) == before, "dacapo-store touched a collection of DaCapo's"
    assert all(name.startswith("dacapo_store.") for name in set(client[DB].list_collection_names()) - set(before))

    # DaCapo keeps working after dacapo-store wrote: appends, a new iteration, another config
    dacapo_stats.store_training_stats(RUN, dacapo_training_stats(20))
    dacapo_stats.store_validation_iteration_scores(RUN, dacapo_validation_scores(100, 200))
    dacapo_configs.store_run_config(small_run_config(tmp_path, name="second_run"))
    assert dacapo_stats.retrieve_training_stats(RUN) == dacapo_training_stats(20)
    assert dacapo_stats.retrieve_validation_iteration_scores(RUN) == dacapo_validation_scores(100, 200).scores
    assert dacapo_configs.retrieve_run_config(RUN).name == RUN
    assert sorted(dacapo_configs.retrieve_run_config_names()) == ["second_run", RUN]

    # and dacapo-store still sees exactly its own data
    assert torch.equal(weights.retrieve_weights(RUN, 100).model["w"], torch.zeros(3))
    assert stats.retrieve_training_stats(RUN) == [TrainingIterationStats(i, 0.5, 0.2) for i in range(5)]
    assert [(s.iteration, s.criterion, s.value) for s in stats.retrieve_validation_scores(RUN)] == [(100, "f1", 0.9)]
    assert weights.retrieve_best(RUN, "validate", "f1") == 100
    # a fresh open (indexes exist on both sides) works too
    MongoWeightsStore(client, DB), MongoStatsStore(client, DB), mongo_stats_store.MongoStatsStore(HOST, DB)


def test_dacapo_on_mongodb_trains_through_the_integration(client, tmp_path: Path, monkeypatch) -> None:
    """DaCapo set to MongoDB (``type: mongo``): its run configs stay in its ``runs``
    collection, its checkpoints, training stats and scores go to dacapo-store's collections of
    the same database, and DaCapo's own stats collections stay empty."""
    options = tmp_path / "dacapo.yaml"
    options.write_text(yaml.safe_dump({
        "type": "mongo", "mongo_db_host": HOST, "mongo_db_name": DB, "runs_base_dir": str(tmp_path / "runs"),
        "compute_context": {"type": "LocalTorch", "config": {"device": "cpu"}},
    }))
    monkeypatch.setenv("DACAPO_OPTIONS_FILE", str(options))
    monkeypatch.chdir(tmp_path)
    create_store = importlib.import_module("dacapo.store.create_store")
    config = small_run_config(tmp_path, name=RUN)
    create_store.create_config_store().store_run_config(config)
    weights, stats = MongoWeightsStore(client, DB), MongoStatsStore(client, DB)
    integration.install(weights, stats)
    try:
        run = Run(config)
        train_run()(run)
        # read back by a fresh process's adapter, the order of datasets and criteria comes from
        # the run config in DaCapo's Mongo config store
        fresh = DacapoStatsStore(MongoStatsStore(client, DB))
        assert fresh.retrieve_validation_iteration_scores(RUN) == run.validation_scores.scores
    finally:
        integration.uninstall()
    assert [c.iteration for c in weights.list_checkpoints(RUN)] == [3, 6]
    assert {s.dataset for s in stats.retrieve_validation_scores(RUN)} == {"val_a", "val_b"}
    assert client[DB]["training_stats"].count_documents({}) == 0
    assert client[DB]["validation_scores"].count_documents({}) == 0
    assert client[DB]["runs"].count_documents({"name": RUN}) == 1
