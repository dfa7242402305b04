"""The memory loads read payloads into: never shared with another load, not even through a
pointer that outlived its tensor."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from dacapo_store import LocalWeightsStore, Weights, release_spare_memory
from dacapo_store.payload_memory import payload_memory

_STALE_VIEW = textwrap.dedent(
    """
    import gc, sys, tempfile
    import torch
    from dacapo_store import LocalWeightsStore, MongoWeightsStore, Weights
    from dacapo_store.testing.mongomock_support import mongomock_client

    store = LocalWeightsStore(tempfile.mkdtemp()) if sys.argv[1] == "local" else MongoWeightsStore(mongomock_client())
    for value in (1, 2):
        store.put_weights("r", value, Weights({"w": torch.full((1_000_000,), float(value))}, None))
    loaded = store.retrieve_weights("r", 1).model["w"]
    array = loaded.numpy()
    loaded.share_memory_()  # moves the storage to shared memory; the array still points at the old one
    gc.collect()
    other = store.retrieve_weights("r", 2).model["w"]
    print(sorted(set(array[::1000].tolist())), flush=True)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGSEGV"), reason="POSIX only")
@pytest.mark.parametrize("backend", ["local", "mongomock"])
def test_a_view_that_outlived_its_tensor_never_shows_another_checkpoint(backend) -> None:
    """A crash of the child (the view faults, as on freed memory) passes; a value of checkpoint 2 fails."""
    for _ in range(20):
        child = subprocess.run([sys.executable, "-c", _STALE_VIEW, backend], capture_output=True, text=True, timeout=120)
        if child.returncode < 0:
            continue  # killed by a signal: the stale pointer faulted
        assert child.returncode == 0, child.stderr
        assert child.stdout.strip() == "[1.0]", child.stdout


def test_loaded_tensors_and_views_of_them_keep_their_values_after_other_loads(tmp_path) -> None:
    store = LocalWeightsStore(tmp_path)
    for value in (1, 2, 3):
        store.put_weights("r", value, Weights({"w": torch.full((500_000,), float(value))}, None))
    kept = store.retrieve_weights("r", 1).model["w"][10:20]
    array = store.retrieve_weights("r", 2).model["w"][5:7].numpy()
    store.retrieve_weights("r", 3)
    assert torch.equal(kept, torch.full((10,), 1.0)) and array.tolist() == [2.0, 2.0]


def test_memory_lives_while_a_view_made_from_it_lives() -> None:
    memory = payload_memory(4 << 20)
    memory[:] = b"\x07" * len(memory)
    piece = memory[100:200].cast("B")
    del memory
    assert bytes(piece) == b"\x07" * 100


def test_release_spare_memory_is_a_no_op_kept_for_one_release() -> None:
    assert release_spare_memory() == 0


def _address_space_bytes() -> int:
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmSize:"))
    return int(kib) * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_retired_load_memory_keeps_a_bounded_address_space_reserved(monkeypatch) -> None:
    """Under ``ulimit -v`` every reserved range counts: retired loads beyond the newest keep at
    most RETIRED_BYTES reserved, however many loads a process makes."""
    from dacapo_store import payload_memory as module

    monkeypatch.setattr(module, "RETIRED_BYTES", 8 << 20)
    megabytes = 4 << 20
    before = _address_space_bytes()
    for _ in range(64):  # 256 MiB of loads, each dropped at once
        view = payload_memory(megabytes)
        view[0] = 1
        del view
    grown = _address_space_bytes() - before
    assert grown <= (8 << 20) + 2 * megabytes, f"{grown >> 20} MiB still reserved"
