"""Peak memory of one store or load, measured in a fresh process from ``/proc/self/status``.

Run as ``python -m benchmarks.memory CASE SIZE_BYTES``; prints one JSON object. ``VmHWM`` (peak
resident set) is reset through ``/proc/self/clear_refs`` just before the measured call, so the
result is the peak growth over the resident set at that moment (the state dict included).
Payload bytes the MongoDB backend keeps in memory files (memfd) are shared memory that is not
resident until mapped pages are touched: they are added in full, an upper bound.
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


def _measure(action) -> int:
    """Peak resident growth (bytes) while ``action`` runs."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _status("VmRSS")
    result = action()
    peak = _status("VmHWM") - before
    del result
    return peak


def measure(case: str, size: int) -> dict[str, int]:
    """Peak memory growth of ``case`` with a ``size``-byte model state dict (see module doc)."""
    state = model_state(size)
    with tempfile.TemporaryDirectory() as tmp:
        if case == "local-store":
            store = LocalWeightsStore(tmp)
            return {"peak": _measure(lambda: store.put_weights("run", 1, Weights(state, None)))}
        if case == "baseline-load":
            path = os.path.join(tmp, "state.pt")
            torch.save(state, path)
            del state
            return {"peak": _measure(lambda: torch.load(path, weights_only=True))}
        if case == "local-load":
            store = LocalWeightsStore(tmp)
            store.put_weights("run", 1, Weights(state, None))
            del state
            return {"peak": _measure(lambda: store.retrieve_weights("run", 1, optimizer=False))}
        client = mongomock_client()
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
                return torch.load(out, weights_only=True)

            return {"peak": _measure(naive)}
        if case == "mongo-load":
            store = MongoWeightsStore(client)
            info = store.put_weights("run", 1, Weights(state, None))
            del state
            peak = _measure(lambda: store.retrieve_weights("run", 1, optimizer=False))
            return {"peak": peak + info.size}
    raise ValueError(f"unknown case {case!r}")


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
