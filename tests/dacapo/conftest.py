"""Fixtures for the DaCapo integration and importer tests.

Most of these tests need DaCapo (dacapo-ml 0.3.5, the optional extra ``dacapo-store[dacapo]``).
Without it they are skipped, unless ``DACAPO_STORE_REQUIRE_DACAPO=1`` (CI sets it): then a
missing DaCapo fails them. DaCapo imports ``fibsem_tools`` and ``cellmap_models``, which its
stores and training loop never use; where they are not installed, the stand-ins in
``stand_ins/`` take their place (appended to ``sys.path``, so real packages win).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from dacapo_store import LocalStatsStore, LocalWeightsStore, MongoStatsStore, MongoWeightsStore
from dacapo_store.stats_store import StatsStore
from dacapo_store.testing.mongomock_support import mongomock_client
from dacapo_store.weights_store import WeightsStore

REQUIRE_DACAPO_ENV = "DACAPO_STORE_REQUIRE_DACAPO"
STAND_INS = Path(__file__).parent / "stand_ins"

if any(importlib.util.find_spec(name) is None for name in ("fibsem_tools", "cellmap_models")):
    sys.path.append(str(STAND_INS))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of the DaCapo suite is slow (DaCapo's import alone takes seconds): `-m slow`."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.slow)

def require_dacapo() -> types.ModuleType:
    """Import DaCapo for a test module: skip the module without it, fail it instead when
    ``DACAPO_STORE_REQUIRE_DACAPO=1``."""
    if os.environ.get(REQUIRE_DACAPO_ENV) == "1":
        return importlib.import_module("dacapo")
    return pytest.importorskip("dacapo", reason="DaCapo (pip install 'dacapo-store[dacapo]') is not installed")

@dataclass
class Stores:
    """A dacapo-store weights and stats store on one backend, and where it lives."""

    kind: str
    weights: WeightsStore
    stats: StatsStore
    location: str | None  # the --store value of a local store; None for mongomock

def make_stores(kind: str, tmp_path: Path) -> Stores:
    """Fresh, empty stores of ``kind`` (``local`` or ``mongomock``)."""
    if kind == "local":
        path = tmp_path / "store"
        return Stores(kind, LocalWeightsStore(path), LocalStatsStore(path), str(path))
    client = mongomock_client()
    return Stores(kind, MongoWeightsStore(client), MongoStatsStore(client), None)

@pytest.fixture(params=["local", "mongomock"])
def stores(request, tmp_path) -> Stores:
    """Fresh dacapo-store stores, on each backend."""
    return make_stores(request.param, tmp_path)

@pytest.fixture
def dacapo_options(tmp_path, monkeypatch) -> Path:
    """DaCapo set up in a fresh directory: a ``dacapo.yaml`` (files, CPU) that
    ``$DACAPO_OPTIONS_FILE`` names; returns DaCapo's ``runs_base_dir``. dacapo-store's own
    ``$DACAPO_STORE_URI`` is unset, and the current directory is ``tmp_path``."""
    runs = tmp_path / "runs"
    options = tmp_path / "dacapo.yaml"
    options.write_text(
        yaml.safe_dump(
            {
                "type": "files",
                "runs_base_dir": str(runs),
                "compute_context": {"type": "LocalTorch", "config": {"device": "cpu"}},
            }
        )
    )
    monkeypatch.setenv("DACAPO_OPTIONS_FILE", str(options))
    monkeypatch.delenv("DACAPO_STORE_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return runs

@pytest.fixture
def installed(stores: Stores, dacapo_options: Path) -> Iterator[Stores]:
    """The integration installed with ``stores``; uninstalled afterwards."""
    require_dacapo()
    from dacapo_store.integrations import dacapo as integration

    integration.install(stores.weights, stores.stats)
    try:
        yield stores
    finally:
        integration.uninstall()

def write_volume(container: Path, name: str, seed: int) -> None:
    """A small raw/ground-truth pair in a zarr container, as DaCapo's ZarrArrayConfig reads it."""
    import zarr

    rng = np.random.default_rng(seed)
    raw = rng.random((24, 16, 16)).astype(np.float32)
    root = zarr.open(str(container), "a")
    for key, data in (("raw", raw), ("gt", (raw > 0.5).astype(np.uint8))):
        array = root.create_dataset(f"{name}/{key}", data=data, overwrite=True)
        array.attrs.update(offset=(0, 0, 0), voxel_size=(2, 2, 2), axis_names=("z", "y", "x"))

def small_run_config(data_dir: Path, name: str = "small_run", num_iterations: int = 6, validation_interval: int = 3):
    """A DaCapo RunConfig that trains in seconds: a one-layer model, two classes, Gunpowder
    batches from one training volume, validation on two volumes (``val_a``, ``val_b``) with
    DaCapo's dummy evaluator (criteria ``frizz_level``, higher is better, and
    ``blipp_score``, lower is better)."""
    from dacapo.experiments import RunConfig
    from dacapo.experiments.architectures import DummyArchitectureConfig
    from dacapo.experiments.datasplits import TrainValidateDataSplitConfig
    from dacapo.experiments.datasplits.datasets import RawGTDatasetConfig
    from dacapo.experiments.datasplits.datasets.arrays import ZarrArrayConfig
    from dacapo.experiments.tasks import OneHotTaskConfig
    from dacapo.experiments.trainers import GunpowderTrainerConfig

    container = data_dir / "volumes.zarr"
    datasets = []
    for seed, crop in enumerate(("train", "val_a", "val_b")):
        write_volume(container, crop, seed)
        datasets.append(
            RawGTDatasetConfig(
                name=crop,
                raw_config=ZarrArrayConfig(name=f"{crop}_raw", file_name=container, dataset=f"{crop}/raw"),
                gt_config=ZarrArrayConfig(name=f"{crop}_gt", file_name=container, dataset=f"{crop}/gt"),
            )
        )
    return RunConfig(
        name=name,
        task_config=OneHotTaskConfig(name="two_classes", classes=["background", "foreground"], kernel_size=1),
        architecture_config=DummyArchitectureConfig(name="one_layer", num_in_channels=1, num_out_channels=2),
        trainer_config=GunpowderTrainerConfig(name="gunpowder", batch_size=1, learning_rate=1e-3, num_data_fetchers=1),
        datasplit_config=TrainValidateDataSplitConfig(
            name="one_train_two_validate", train_configs=datasets[:1], validate_configs=datasets[1:]
        ),
        repetition=0,
        num_iterations=num_iterations,
        validation_interval=validation_interval,
    )

def train_run():
    """DaCapo's ``train_run`` (``dacapo.train`` the module is shadowed by the function)."""
    return importlib.import_module("dacapo.train").train_run
