"""Damaged payloads and catalog entries: each gives a CorruptCheckpointError naming the run,
iteration and part, never wrong tensors; the other checkpoints stay readable."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from bson import ObjectId

from dacapo_store import CorruptCheckpointError

from .conftest import Backend, assert_all_verify, make_weights

RUN = "victim"
DAMAGED = 3


def local_damage(backend: Backend, location: str, damage: str) -> None:
    path: Path = backend.weights.payload_path(location)
    data = path.read_bytes()
    middle = len(data) // 2
    if damage == "flipped byte":
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])
    elif damage in ("missing chunk", "truncated chunk"):
        path.write_bytes(data[:middle] + data[middle + 100 :] if damage == "missing chunk" else data[:middle])
    elif damage == "extra bytes":
        path.write_bytes(data + b"\0")
    elif damage == "payload gone":
        path.unlink()


def gridfs_damage(backend: Backend, location: str, damage: str) -> None:
    files, chunks = backend.root["dacapo_store.weights.files"], backend.root["dacapo_store.weights.chunks"]
    file_id = ObjectId(location)
    assert chunks.count_documents({"files_id": file_id}) >= 2, "the test needs a multi-chunk payload"
    first = {"files_id": file_id, "n": 0}
    if damage == "flipped byte":
        data = bytes(chunks.find_one(first)["data"])
        chunks.update_one(first, {"$set": {"data": data[:10] + bytes([data[10] ^ 0x01]) + data[11:]}})
    elif damage == "missing chunk":
        chunks.delete_one({"files_id": file_id, "n": 1})
    elif damage == "truncated chunk":
        chunks.update_one(first, {"$set": {"data": bytes(chunks.find_one(first)["data"])[:-7]}})
    elif damage == "extra bytes":
        last = {"files_id": file_id, "n": chunks.count_documents({"files_id": file_id}) - 1}
        chunks.update_one(last, {"$set": {"data": bytes(chunks.find_one(last)["data"]) + b"\0"}})
    elif damage == "payload gone":
        files.delete_one({"_id": file_id})
        chunks.delete_many({"files_id": file_id})


def tamper_catalog_digest(backend: Backend) -> None:
    """Record a well-formed but wrong digest for the model part of checkpoint DAMAGED."""
    digest = backend.weights.checkpoint_info(RUN, DAMAGED).parts["model"].digest
    wrong = digest[:-1] + ("1" if digest[-1] == "0" else "0")
    if backend.kind == "local":
        row = backend.weights.catalog.query(
            "SELECT parts FROM checkpoints WHERE run = ? AND iteration = ?", (RUN, DAMAGED)
        )[0]
        with backend.weights.catalog.transaction() as db:
            db.execute(
                "UPDATE checkpoints SET parts = ? WHERE run = ? AND iteration = ?",
                (row["parts"].replace(digest, wrong), RUN, DAMAGED),
            )
    else:
        backend.root["dacapo_store.checkpoints"].update_one(
            {"run": RUN, "iteration": DAMAGED}, {"$set": {"parts.model.digest": wrong}}
        )


DAMAGES = ["flipped byte", "missing chunk", "truncated chunk", "extra bytes", "payload gone"]


@pytest.mark.parametrize(
    "damage, part",
    [(damage, part) for damage in DAMAGES for part in ("model", "optimizer")] + [("catalog digest", "model")],
)
def test_damage_is_reported_never_loaded(backend: Backend, damage: str, part: str) -> None:
    store = backend.weights
    for iteration in (1, 2, DAMAGED, 4):
        store.put_weights(RUN, iteration, make_weights(iteration, size=1000))
    if damage == "catalog digest":
        tamper_catalog_digest(backend)
    else:
        damage_payload: Callable[[Backend, str, str], None] = (
            local_damage if backend.kind == "local" else gridfs_damage
        )
        damage_payload(backend, store.checkpoint_info(RUN, DAMAGED).parts[part].location, damage)
    expected = rf"checkpoint {DAMAGED} of run '{RUN}' \({'model' if damage == 'catalog digest' else part} part\)"
    with pytest.raises(CorruptCheckpointError, match=expected):
        store.retrieve_weights(RUN, DAMAGED)
    with pytest.raises(CorruptCheckpointError, match=expected):
        store.verify(RUN, DAMAGED)
    if part == "optimizer":  # the intact model part is still served on its own
        model = store.retrieve_weights(RUN, DAMAGED, optimizer=False).model
        assert all(bool((tensor == DAMAGED).all()) for tensor in model.values())
    store.remove(RUN, DAMAGED)  # a damaged checkpoint can still be removed
    assert assert_all_verify(store) == 3
    assert store.latest_iteration(RUN) == 4
