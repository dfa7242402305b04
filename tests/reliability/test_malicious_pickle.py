"""A checkpoint whose payload is a malicious pickle, planted straight into storage with a
matching catalog digest (so only the loader stands in the way): it is refused with a clear
error, and the code in the pickle provably never runs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from bson import ObjectId

from dacapo_store import CorruptCheckpointError
from dacapo_store.digests import DEFAULT_ALGORITHM, format_digest, new_hash

from .conftest import Backend, make_weights

RUN = "victim"


class Exploit:
    """Unpickles to ``eval(code)``: writes the marker file as a side effect."""

    def __init__(self, marker: Path) -> None:
        self.code = f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned')"

    def __reduce__(self) -> tuple:
        return (eval, (self.code,))


def malicious_payload(marker: Path) -> bytes:
    """A ``torch.save``-shaped zip whose ``data.pkl`` runs code when loaded unsafely."""
    buffer = io.BytesIO()
    torch.save({"layer.weight": torch.zeros(2), "payload": Exploit(marker)}, buffer)
    return buffer.getvalue()


def test_the_payload_really_is_malicious(tmp_path: Path) -> None:
    """Positive control: an unsafe ``torch.load`` of the same bytes does run the code."""
    marker = tmp_path / "control-marker"
    torch.load(io.BytesIO(malicious_payload(marker)), weights_only=False)
    assert marker.read_text() == "pwned"


def plant(backend: Backend, part: str, data: bytes) -> None:
    """Replace stored checkpoint 1's ``part`` payload by ``data`` and record its digest."""
    store = backend.weights
    location = store.checkpoint_info(RUN, 1).parts[part].location
    hash_object = new_hash()
    hash_object.update(data)
    digest, size = format_digest(DEFAULT_ALGORITHM, hash_object), len(data)
    if backend.kind == "local":
        store.payload_path(location).write_bytes(data)
        row = store.catalog.query("SELECT parts FROM checkpoints WHERE run = ? AND iteration = 1", (RUN,))[0]
        parts = row["parts"].replace(store.checkpoint_info(RUN, 1).parts[part].digest, digest)
        parts = parts.replace(f'"size": {store.checkpoint_info(RUN, 1).parts[part].size}', f'"size": {size}')
        with store.catalog.transaction() as db:
            db.execute("UPDATE checkpoints SET parts = ? WHERE run = ? AND iteration = 1", (parts, RUN))
    else:
        store.bucket.delete(ObjectId(location))
        store.bucket.upload_from_stream_with_id(ObjectId(location), "planted", io.BytesIO(data))
        backend.root["dacapo_store.checkpoints"].update_one(
            {"run": RUN, "iteration": 1},
            {"$set": {f"parts.{part}.digest": digest, f"parts.{part}.size": size}},
        )
    assert store.checkpoint_info(RUN, 1).parts[part].digest == digest


@pytest.mark.parametrize("part", ["model", "optimizer"])
def test_malicious_pickle_is_refused_and_never_runs(backend: Backend, tmp_path: Path, part: str) -> None:
    backend.weights.put_weights(RUN, 1, make_weights(1))
    backend.weights.put_weights(RUN, 2, make_weights(2))
    marker = tmp_path / "marker"
    plant(backend, part, malicious_payload(marker))
    backend.weights.verify(RUN, 1)  # the digest matches: only the loader can refuse it
    with pytest.raises(CorruptCheckpointError, match=rf"checkpoint 1 of run '{RUN}' \({part} part\).*refused"):
        backend.weights.retrieve_weights(RUN, 1)
    assert not marker.exists(), "the pickle's code ran"
    assert backend.weights.retrieve_weights(RUN, 2).model["layer.bias"][0] == 2
