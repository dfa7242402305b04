"""The timed rows: dacapo-store (``ours``) beside the previous release (``0.5.0``), safetensors,
and the floor, in the same interleaved rounds.

Each side runs in its own worker process (:mod:`benchmarks.worker`): ours with this checkout,
the release with its own source and venv (:mod:`benchmarks.release`). Both build the same model
and Adam state (same seed, same torch), store it in a local store in the same temporary
directory, and run torch on one thread. Round by round, in a rotated order, the parent asks
each contender for one timed run. The safetensors baselines and the floors run in our worker.

A "model of N MB" is N MB of float32 parameters; Adam's state after one step holds two moments
per parameter, so the checkpoint is 3N MB. Cold: before each run, the files that contender
reads (every file of its store, or its safetensors file) are fsynced and evicted from the page
cache (``posix_fadvise(DONTNEED)``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .release import REPO, Release
from .system import can_drop_page_cache
from .timing import Samples
from .workloads import MB

SMALL_CHECKPOINT_BYTES = 8_000_000
"""The many-small-tensors checkpoint: 5,000 parameters and their Adam state (20,000 tensors)."""

WORKER = Path(__file__).with_name("worker.py")
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
"""glibc ``malloc`` settings both workers run with. By default glibc maps blocks from 128 KiB
anew (and faults their pages in) until a larger block is freed, and trims its heap when it frees
that much: when an Adam step's 5 MB temporaries are mapped anew depends on what the process
allocated before, not on the load being timed (in new processes after the same load, steps took
36-95 ms). Fixed thresholds serve them from the heap in both workers alike."""
OURS, RELEASE, SAFETENSORS, FLOOR = "ours", "0.5.0", "safetensors", "floor"


class Worker:
    """A :mod:`benchmarks.worker` process with ``python`` and ``source`` on ``PYTHONPATH``."""

    def __init__(self, python: str, source: str, cwd: str) -> None:
        env = dict(os.environ, PYTHONPATH=source, OMP_NUM_THREADS="1", **FIXED_MALLOC)
        self.process = subprocess.Popen([python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=cwd)
        self.hello = self.ask(op="hello")

    def ask(self, **request: object) -> dict:
        """Send one request; the reply. Raises RuntimeError with the worker's traceback on failure."""
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited (code {self.process.wait()})")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"benchmark worker failed on {request}:\n{reply['error']}")
        return reply

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


@contextmanager
def workers(release: Release | None) -> Iterator[tuple[Worker, Worker | None, str]]:
    """Our worker, the release's (``None`` without a release) and their shared temp directory."""
    with tempfile.TemporaryDirectory(prefix="dacapo-store-bench-") as tmp, ExitStack() as stack:
        ours = Worker(sys.executable, str(REPO), tmp)
        stack.callback(ours.close)
        expected = str(REPO / "dacapo_store")
        if not ours.hello["file"].startswith(expected):
            raise RuntimeError(f"our worker imported {ours.hello['file']}, not {expected}: check PYTHONPATH")
        theirs = None
        if release is not None:
            theirs = Worker(release.python, release.source, tmp)
            stack.callback(theirs.close)
            if not theirs.hello["file"].startswith(release.source):
                raise RuntimeError(f"the release worker imported {theirs.hello['file']}, not {release.source}")
            if theirs.hello["torch"] != ours.hello["torch"]:
                raise RuntimeError(f"torch differs: ours {ours.hello['torch']}, release {theirs.hello['torch']}")
        yield ours, theirs, tmp


@dataclass
class Spec:
    """One row: the workload, our case (the release runs the same), the safetensors case and
    the floor case (``None``: not meaningful), cold or warm, and the targets: least ratio
    (baseline time over ours) per baseline."""

    name: str
    workload: str
    case: str
    safetensors: str | None
    floor: str | None
    cold: bool
    targets: dict[str, float] = field(default_factory=dict)


@dataclass
class Result:
    """A row's spec and the seconds of every contender that ran, round by round."""

    spec: Spec
    label: str
    samples: Samples
    resident: dict[str, int | None] = field(default_factory=dict)
    """Cold rows, per contender: the most bytes ``fincore`` found still cached after an
    eviction (``None``: not checked)."""


def specs(cold: bool) -> list[Spec]:
    """The rows of the issue's performance table (the cold ones only with ``cold``)."""
    at_least_release = {RELEASE: 0.9}
    rows = [Spec("store_weights, local", "main", "store_weights", "st_store", None, False,
                 {SAFETENSORS: 1.0, RELEASE: 0.9}),
            Spec("store_weights, mongomock", "main", "store_weights_mongomock", None, None, False, at_least_release)]
    for is_cold in (False, True) if cold and can_drop_page_cache() else (False,):
        temperature = "cold" if is_cold else "warm"
        rows += [
            Spec(f"load_weights into the model, {temperature}", "main", "load_weights", "st_load", "floor_read", is_cold,
                 {SAFETENSORS: 1.0, RELEASE: 1.0}),
            Spec(f"retrieve_weights, {temperature}", "main", "retrieve_weights", "st_retrieve", "floor_read", is_cold,
                 at_least_release),
            Spec(f"resume (load + step), {temperature}", "main", "resume", "st_resume", "floor_read", is_cold,
                 at_least_release),
            Spec(f"inference load (model only), {temperature}", "main", "inference", "st_inference", "floor_read_model",
                 is_cold, at_least_release),
        ]
    rows += [
        Spec("background store stall", "main", "background_stall", None, "floor_copy", False, at_least_release),
        Spec("store_weights, local", "small", "store_weights", "st_store", None, False, at_least_release),
        Spec("load_weights into the model, warm", "small", "load_weights", "st_load", "floor_read", False,
             at_least_release),
    ]
    return rows


def describe_model(size: int) -> str:
    return f"{size / MB:g} MB model + Adam ({3 * size / MB:g} MB)"


def describe_small_model(params: int) -> str:
    return f"{params:,} small params + Adam ({SMALL_CHECKPOINT_BYTES / MB:g} MB, {4 * params:,} tensors)"


def timed_rows(release: Release | None, sizes: list[int], small_params: int, rounds: int, cold: bool) -> list[Result]:
    """Every row of :func:`specs` for each model size (the small-tensors rows once, with
    ``small_params`` parameters; 0 skips them), each timed over ``rounds`` interleaved rounds."""
    results = []
    with workers(release) as (ours, theirs, tmp):
        for index, size in enumerate(sizes):
            workloads = {"main": (size, 20, describe_model(size))}
            if index == 0 and small_params:
                workloads["small"] = (SMALL_CHECKPOINT_BYTES // 3, small_params, describe_small_model(small_params))
            for name, (nbytes, tensors, _) in workloads.items():
                ours.ask(op="setup", workload=name, size=nbytes, tensors=tensors, dir=f"{tmp}/ours-{name}", baselines=True)
                if theirs is not None:
                    theirs.ask(op="setup", workload=name, size=nbytes, tensors=tensors, dir=f"{tmp}/release-{name}")
            for spec in specs(cold):
                if spec.workload in workloads:
                    label = f"{spec.name}, {workloads[spec.workload][2]}"
                    print(f"timing {label} ...", file=sys.stderr, flush=True)
                    results.append(Result(spec, label, *_interleaved(spec, ours, theirs, rounds)))
    return results


def _interleaved(spec: Spec, ours: Worker, theirs: Worker | None, rounds: int) -> tuple[Samples, dict[str, int | None]]:
    """Every contender of ``spec`` once per round, in a rotated order per round; the samples,
    and for a cold row each contender's most bytes still cached after an eviction (``None``:
    not checked)."""
    contenders = {OURS: (ours, spec.case)}
    if theirs is not None:
        contenders[RELEASE] = (theirs, spec.case)
    if spec.safetensors:
        contenders[SAFETENSORS] = (ours, spec.safetensors)
    if spec.floor:
        contenders[FLOOR] = (ours, spec.floor)
    samples = Samples({name: [] for name in contenders})
    resident: dict[str, int | None] = {}
    names = list(contenders)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            worker, case = contenders[name]
            reply = worker.ask(op="time", workload=spec.workload, case=case, cold=spec.cold)
            samples.seconds[name].append(reply["seconds"])
            if spec.cold:
                cached = reply.get("resident")
                resident[name] = None if cached is None or resident.get(name, 0) is None else max(resident.get(name, 0), cached)
    return samples, resident
