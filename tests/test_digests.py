"""Digests: the stored form, and checkpoints recorded with sha256 before XXH3 still load."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch
from bson import ObjectId

from dacapo_store import CorruptCheckpointError, LocalWeightsStore, Weights
from dacapo_store.digests import ALGORITHMS, DEFAULT_ALGORITHM, algorithm_of, new_hash
from dacapo_store.records import PartInfo


@pytest.mark.parametrize("digest, algorithm", [("xxh3-128:" + "0" * 32, "xxh3-128"), ("sha256:" + "a" * 64, "sha256")])
def test_a_stored_digest_names_its_algorithm(digest, algorithm):
    assert algorithm_of(digest) == algorithm


@pytest.mark.parametrize(
    "digest", ["", "0" * 32, "xxh3-128:" + "0" * 31, "sha256:" + "A" * 64, "md5:" + "0" * 32, "xxh3-128:", None, 12]
)
def test_malformed_or_unknown_digests_are_refused(digest):
    with pytest.raises(ValueError, match="digest"):
        algorithm_of(digest)


def test_unknown_algorithms_have_no_hash():
    assert DEFAULT_ALGORITHM in ALGORITHMS
    with pytest.raises(ValueError, match="unknown digest algorithm 'md5'"):
        new_hash("md5")


def test_parts_round_trip_and_read_the_sha256_form_of_older_entries():
    part = PartInfo("abc", 10, "xxh3-128:" + "f" * 32)
    assert PartInfo.from_document(part.to_document()) == part
    legacy = {"location": "abc", "size": 10, "sha256": "e" * 64}
    assert PartInfo.from_document(legacy) == PartInfo("abc", 10, "sha256:" + "e" * 64)


def _payload_bytes(store, location: str) -> bytes:
    if isinstance(store, LocalWeightsStore):
        return store.payload_path(location).read_bytes()
    buffer = io.BytesIO()
    store.bucket.download_to_stream(ObjectId(location), buffer)
    return buffer.getvalue()


def _rewrite_part(store, run: str, iteration: int, part: str, document: dict) -> None:
    """Replace the catalog's record of one part by ``document`` (as an older version wrote it)."""
    if isinstance(store, LocalWeightsStore):
        row = store.catalog.query("SELECT parts FROM checkpoints WHERE run = ? AND iteration = ?", (run, iteration))[0]
        parts = json.loads(row["parts"])
        parts[part] = document
        with store.catalog.transaction() as db:
            db.execute("UPDATE checkpoints SET parts = ? WHERE run = ? AND iteration = ?",
                       (json.dumps(parts), run, iteration))
    else:
        store.checkpoints.update_one({"run": run, "iteration": iteration}, {"$set": {f"parts.{part}": document}})


def _store_and_record_as_sha256(store, digest_of=lambda data: hashlib.sha256(data).hexdigest()):
    model = {"w": torch.arange(1000.0), "b": torch.ones(3)}
    info = store.put_weights("run", 1, Weights(model, {"state": {}, "param_groups": []}))
    for part, record in info.parts.items():
        data = _payload_bytes(store, record.location)
        _rewrite_part(store, "run", 1, part, {"location": record.location, "size": record.size, "sha256": digest_of(data)})
    return model


def test_a_checkpoint_recorded_with_sha256_loads_and_verifies(weights_store):
    model = _store_and_record_as_sha256(weights_store)
    assert weights_store.checkpoint_info("run", 1).parts["model"].digest.startswith("sha256:")
    weights_store.verify("run", 1)
    loaded = weights_store.retrieve_weights("run", 1)
    assert torch.equal(loaded.model["w"], model["w"]) and loaded.optimizer == {"state": {}, "param_groups": []}


def test_a_wrong_sha256_is_reported_as_corruption(weights_store):
    _store_and_record_as_sha256(weights_store, digest_of=lambda data: hashlib.sha256(data + b"!").hexdigest())
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint 1 of run 'run' \(model part\): digest mismatch"):
        weights_store.retrieve_weights("run", 1)
    with pytest.raises(CorruptCheckpointError, match="digest mismatch"):
        weights_store.verify("run", 1)


def test_an_invalid_recorded_digest_is_reported_as_corruption(weights_store):
    info = weights_store.put_weights("run", 1, Weights({"w": torch.zeros(4)}, None))
    record = info.parts["model"]
    _rewrite_part(weights_store, "run", 1, "model", {"location": record.location, "size": record.size, "digest": "md5:00"})
    with pytest.raises(CorruptCheckpointError, match="the catalog records an invalid digest"):
        weights_store.retrieve_weights("run", 1)
