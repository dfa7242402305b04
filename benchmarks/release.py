"""The previous release beside the code under test: its source and a venv of its own.

A release is named by a git revision of this repository (default ``8ae8ec6``, 0.5.0) or by the
path of a checkout. A revision is exported with ``git archive``; the venv gets the torch and the
dependencies this environment has (same versions, so that only dacapo-store's code differs),
and the worker finds the release's ``dacapo_store`` through ``PYTHONPATH``. Both are cached
under ``benchmarks/results/`` (about 40 s to build the first time, then reused).
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import venv
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / "results"
RELEASE_0_5_0 = "8ae8ec6"
DEPENDENCIES = ("torch", "pymongo", "xxhash", "click", "tqdm", "pyyaml", "numpy", "matplotlib", "mongomock")
"""0.5.0's dependencies and mongomock (its ``[test]`` extra has it), pinned to this env's versions."""


@dataclass
class Release:
    """Where a release's worker runs: ``python`` with ``source`` on ``PYTHONPATH``."""

    label: str
    python: str
    source: str


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def _export(commit: str, target: Path) -> None:
    """The files of ``commit`` under ``target`` (written under a temporary name, then renamed)."""
    partial = target.with_name(target.name + ".partial")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(partial, filter="data")
    partial.rename(target)


def _build_venv(target: Path) -> None:
    """A venv with this environment's versions of :data:`DEPENDENCIES` (``ready`` marks it done)."""
    venv.create(target, with_pip=True, clear=True)
    pins = [f"{name}=={version(name).split('+')[0]}" for name in DEPENDENCIES]
    subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", *pins], check=True,
                   stdout=sys.stderr)
    (target / "ready").touch()


def prepare(spec: str, python: str | None = None) -> Release:
    """The release named by ``spec`` (a checkout's path, or a git revision), its venv built
    unless ``python`` (an interpreter that has torch, mongomock and safetensors-free deps) is given.

    Raises:
        subprocess.CalledProcessError: ``spec`` is no revision of this repository, or the
            venv could not be built.
    """
    if Path(spec).is_dir():
        source = Path(spec).resolve()
        label = str(source)
        key = "path-" + hashlib.sha1(str(source).encode()).hexdigest()[:10]
    else:
        commit = _git("rev-parse", "--verify", f"{spec}^{{commit}}")
        label = f"{spec} ({commit[:10]})"
        key = commit[:12]
        source = CACHE / f"release-{key}" / "src"
        if not source.is_dir():
            source.parent.mkdir(parents=True, exist_ok=True)
            _export(commit, source)
    if python is None:
        environment = CACHE / f"release-{key}" / "venv"
        if not (environment / "ready").exists():
            print(f"building the venv of {label} in {environment} ...", file=sys.stderr, flush=True)
            _build_venv(environment)
        python = str(environment / "bin" / "python")
    return Release(label, python, str(source))
