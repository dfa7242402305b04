"""Hand-built DaCapo runs directories, written without DaCapo, in both checkpoint formats."""

from __future__ import annotations

import copy
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dacapo_store.testing.contract import ToyRun


class Exploit:
    """Unpickles to ``eval(code)``: writes ``marker`` as a side effect."""

    def __init__(self, marker: Path) -> None:
        self.code = f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned')"

    def __reduce__(self) -> tuple:
        return (eval, (self.code,))


def dacapo_weights_class(monkeypatch) -> type:
    """A class that pickles under DaCapo 0.3.5's name ``dacapo.store.weights_store.Weights``,
    as DaCapo's ``torch.save(Weights(...))`` writes it, without DaCapo: a stand-in module is
    put in ``sys.modules`` for the test (``monkeypatch`` restores any real DaCapo after)."""
    module = types.ModuleType("dacapo.store.weights_store")

    class Weights:
        def __init__(self, model: Any, optimizer: Any) -> None:
            self.model = model
            self.optimizer = optimizer

    Weights.__module__, Weights.__qualname__ = module.__name__, "Weights"
    module.Weights = Weights
    for name in ("dacapo", "dacapo.store"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return Weights


def checkpoint_path(runs: Path, run: str, iteration: int | str) -> Path:
    path = runs / run / "checkpoints" / "iterations" / str(iteration)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def build_tree(runs: Path, monkeypatch) -> dict[tuple[str, int], tuple[dict, dict]]:
    """Two runs: ``run_new`` (DaCapo 0.3.5: pickled ``Weights``, iterations 10 and 20) and
    ``run_old`` (older DaCapo: ``{"model", "optimizer"}``, iteration 5); DaCapo's stats files
    for ``run_new`` (20 training iterations with numpy floats, validation at 10 and 20).

    Returns:
        (run, iteration) -> (model state, optimizer state) of every checkpoint written.
    """
    weights_class = dacapo_weights_class(monkeypatch)
    written = {}
    run = ToyRun("run_new", seed=1)
    for iteration in (10, 20):
        run.train_steps(2)
        state = copy.deepcopy((run.model.state_dict(), run.optimizer.state_dict()))
        torch.save(weights_class(*state), checkpoint_path(runs, "run_new", iteration))
        written[("run_new", iteration)] = state
    old = ToyRun("run_old", seed=2)
    old.train_steps(1)
    state = (old.model.state_dict(), old.optimizer.state_dict())
    torch.save({"model": state[0], "optimizer": state[1]}, checkpoint_path(runs, "run_old", 5))
    written[("run_old", 5)] = state
    write_stats(runs, "run_new", "training_stats", training_documents("run_new", 20))
    write_stats(runs, "run_new", "validation_scores", [
        {"iteration": i, "scores": [[[np.float64(i / 100), np.float64(1 - i / 100)]]], "run_name": "run_new"}
        for i in (10, 20)
    ])
    return written


def training_documents(run: str, until: int) -> list[dict]:
    """DaCapo's training stats documents (its evaluators and losses give numpy floats)."""
    return [{"iteration": i, "loss": np.float64(1 / (i + 1)), "time": 0.25, "run_name": run} for i in range(until)]


def write_stats(runs: Path, run: str, kind: str, documents: Any) -> Path:
    """A DaCapo ``FileStatsStore`` file: ``<runs>/stats/<kind>/<run>``, a pickled list."""
    path = runs / "stats" / kind / run
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(documents))
    return path
