"""Stores written by dacapo-store 0.5.0 (flat v1 payloads and ``torch.save`` archives, local and
MongoDB) load bit-exactly: the fixtures under ``tests/fixtures/stores_0_5_0/`` were written by
0.5.0 itself (see ``tests/fixtures/make_0_5_0_stores.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from bson import json_util

from dacapo_store import LocalWeightsStore, MongoWeightsStore
from dacapo_store.testing.mongomock_support import mongomock_client
from dacapo_store.testing.state_values import assert_loaded_equal

FIXTURES = Path(__file__).parent / "fixtures" / "stores_0_5_0"
FORMATS = ["flat", "torch"]


def _expected() -> dict[str, dict[str, Any]]:
    return torch.load(FIXTURES / "expected.pt", weights_only=True)


def _local_store(payload_format: str, tmp_path: Path) -> LocalWeightsStore:
    copy = tmp_path / "store"
    shutil.copytree(FIXTURES / payload_format / "local", copy)
    return LocalWeightsStore(copy)


def _mongo_store(payload_format: str, tmp_path: Path) -> MongoWeightsStore:
    """A mongomock server holding the dumped collections again, and a store on it."""
    client = mongomock_client()
    dump = json_util.loads((FIXTURES / payload_format / "mongo.json").read_text())
    for database, collections in dump.items():
        for name, documents in collections.items():
            if documents:
                client[database][name].insert_many(documents)
    return MongoWeightsStore(client)


OPENERS = {"local": _local_store, "mongomock": _mongo_store}


@pytest.mark.parametrize("backend", OPENERS)
@pytest.mark.parametrize("payload_format", FORMATS)
def test_checkpoints_stored_by_0_5_0_load_bit_exactly(payload_format: str, backend: str, tmp_path: Path) -> None:
    store = OPENERS[backend](payload_format, tmp_path)
    expected = _expected()
    assert sorted(store.list_runs()) == sorted(key.split("/")[0] for key in expected)
    for key, state in expected.items():
        run, iteration = key.split("/")
        weights = store.retrieve_weights(run, int(iteration))
        assert_loaded_equal(weights.model, state["model"])
        assert_loaded_equal(weights.optimizer, state["optimizer"])
        store.verify(run, int(iteration))


@pytest.mark.parametrize("payload_format", FORMATS)
def test_0_5_0_views_and_tied_weights_load_sharing_one_storage(payload_format: str, tmp_path: Path) -> None:
    model = _local_store(payload_format, tmp_path).retrieve_weights("tied", 2).model
    assert model["embed"].untyped_storage().data_ptr() == model["decode"].untyped_storage().data_ptr()
    assert model["half"].untyped_storage().data_ptr() == model["embed"].untyped_storage().data_ptr()
    assert (model["half"].storage_offset(), model["strided"].stride()) == (6, (1, 6))
    assert model._metadata == {"": {"version": 2}}
