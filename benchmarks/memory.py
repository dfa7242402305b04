"""Peak memory of one store or load, measured in a fresh process from ``/proc/self/status``.

Run as ``python -m benchmarks.memory CASE SIZE_BYTES``; prints one JSON object with ``peak``
(the growth of the resident set at its highest during the call, over the resident set just
before it, the state dict included) and ``retained`` (the growth still resident after the call:
what a store keeps, such as mongomock's copy of the chunks). ``VmHWM`` (peak resident set) is
reset through ``/proc/self/clear_refs`` just before the measured call. A load touches every
loaded byte (as copying into a model does), so that memory-mapped tensors count in full.
"""

from __future__ import annotations

import gc
import io
import json
import os
import sys
import tempfile

import torch

from dacapo_store import LocalWeightsStore, MongoWeightsStore, Weights
from dacapo_store.testing.mongomock_support import mongomock_client

from .workloads import model_state


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _measure(action) -> dict[str, int]:
    """Peak and retained resident growth (bytes) of ``action`` (see the module doc)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _status("VmRSS")
    result = action()
    peak = _status("VmHWM") - before
    del result
    gc.collect()
    return {"peak": peak, "retained": _status("VmRSS") - before}


def _touched(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` after reading every byte of it (memory-mapped pages become resident)."""
    for tensor in state.values():
        tensor.sum()
    return state


def measure(case: str, size: int) -> dict[str, int]:
    """Peak and retained memory growth of ``case`` with a ``size``-byte model state dict."""
    state = model_state(size)
    with tempfile.TemporaryDirectory() as tmp:
        if case == "local-store":
            store = LocalWeightsStore(tmp)
            return _measure(lambda: store.put_weights("run", 1, Weights(state, None)))
        if case == "baseline-load":
            path = os.path.join(tmp, "state.pt")
            torch.save(state, path)
            del state
            return _measure(lambda: _touched(torch.load(path, weights_only=True)))
        if case == "local-load":
            store = LocalWeightsStore(tmp)
            store.put_weights("run", 1, Weights(state, None))
            del state
            return _measure(lambda: _touched(store.retrieve_weights("run", 1, optimizer=False).model))
        client = mongomock_client()
        if case == "mongo-store":
            store = MongoWeightsStore(client)
            return _measure(lambda: store.put_weights("run", 1, Weights(state, None)))
        if case == "mongo-naive-load":
            import gridfs

            bucket = gridfs.GridFSBucket(client.get_database("naive"), "weights")
            buffer = io.BytesIO()
            torch.save(state, buffer)
            buffer.seek(0)
            file_id = bucket.upload_from_stream("state", buffer)
            del state, buffer

            def naive() -> object:
                out = io.BytesIO()
                bucket.download_to_stream(file_id, out)
                out.seek(0)
                return _touched(torch.load(out, weights_only=True))

            return _measure(naive)
        if case == "mongo-load":
            store = MongoWeightsStore(client)
            store.put_weights("run", 1, Weights(state, None))
            del state
            return _measure(lambda: _touched(store.retrieve_weights("run", 1, optimizer=False).model))
    raise ValueError(f"unknown case {case!r}")


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
