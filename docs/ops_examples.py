"""Regenerate the example outputs of README's "Operations: the `dacapo-store` command" section.

Seeds one local store (``lab-store`` in a temporary directory, addressed through
``$DACAPO_STORE_URI`` as the README says) with two training runs, then runs every operations
subcommand in the README's order and prints each command line and its output. The chart of
``plot`` is copied to ``docs/plot-example.png``. Run from the repository root:

    python docs/ops_examples.py > /tmp/ops-examples.txt

Timestamps, upload tokens and the last error line (a refused connection) depend on the machine
and the moment; everything else is the same on every run.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
from click.testing import CliRunner

from dacapo_store import TrainingIterationStats, Weights, create_stats_store, create_weights_store
from dacapo_store.cli import main
from dacapo_store.weights_store import Reservation

STORE = "lab-store"
DATASET = "validate"
PLOT_COPY = Path(__file__).resolve().parent / "plot-example.png"
RUNS = {
    # run name: (checkpoint iterations, iteration where dice peaks)
    "cells_unet_lr1e-3": (range(1000, 5000, 1000), 8000),
    "cells_unet_lr1e-4": (range(1000, 11000, 1000), 6000),
}


def toy_weights(seed: int) -> Weights:
    """A small convolutional network and its Adam state after one step."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 12, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(12, 12, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(12, 1, 1),
    )
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 1, 8, 8)).sum().backward()
    optimizer.step()
    return Weights(model.state_dict(), optimizer.state_dict())


def dice(iteration: int, peak: int, threshold: float) -> float:
    """A validation curve rising to ``peak``; threshold 0.5 is the better parameter."""
    return 0.87 - 0.25 * ((iteration - peak) / 8000) ** 2 - abs(threshold - 0.5) / 10


def seed_store() -> None:
    """Checkpoints, training losses and dice (higher is better) / voi (lower is better) scores."""
    weights, stats = create_weights_store(STORE), create_stats_store(STORE)
    for run, (iterations, peak) in RUNS.items():
        for iteration in iterations:
            weights.put_weights(run, iteration, toy_weights(iteration))
            for threshold in (0.3, 0.5):
                score = dice(iteration, peak, threshold)
                stats.store_validation_scores(
                    run, iteration, DATASET, {"dice": score, "voi": 1.6 - score},
                    {"dice": True, "voi": False}, {"threshold": threshold},
                )
        stats.store_training_stats(
            run,
            [TrainingIterationStats(i, 1 / (1 + i / 500) + 0.02 * math.sin(i / 50), 0.1)
             for i in range(0, max(iterations), 10)],
        )


def seed_garbage() -> None:
    """An upload whose writer died two hours ago after writing its model part, and a
    ``.partial`` file that no upload owns."""
    weights = create_weights_store(STORE)
    reservation = Reservation.new("cells_unet_lr1e-4", 11000)
    weights._reserve(reservation, False)
    weights._write_part(reservation, "model", toy_weights(11000).model)
    with weights.catalog.transaction() as db:
        db.execute(
            "UPDATE checkpoints SET heartbeat = ? WHERE token = ?", (time.time() - 7200, reservation.token)
        )
    (weights.payload_dir / f"{uuid.uuid4().hex}.optimizer.pt.partial").write_bytes(b"\0" * 70000)


def dacapo_store(*args: str) -> None:
    """Print ``$ dacapo-store ARGS`` and what the command prints (stdout and stderr)."""
    print(f"$ dacapo-store {shlex.join(args)}")
    result = CliRunner().invoke(main, list(args))
    print(result.output, end="")


def section(title: str) -> None:
    print(f"\n### {title}")


def main_script() -> None:
    directory = tempfile.mkdtemp(prefix="dacapo-store-examples-")
    os.chdir(directory)
    os.environ["DACAPO_STORE_URI"] = STORE
    try:
        seed_store()
        section("runs")
        dacapo_store("runs")
        section("checkpoints / scores")
        dacapo_store("checkpoints", "cells_unet_lr1e-3")
        print()
        dacapo_store("scores", "cells_unet_lr1e-3", "--criterion", "dice")
        section("best")
        dacapo_store("best", "cells_unet_lr1e-4", DATASET, "dice")
        print()
        dacapo_store("best", "cells_unet_lr1e-4", DATASET, "voi", "--json")
        section("export / import")
        dacapo_store("export", "cells_unet_lr1e-4", "6000", "-o", "best.pt")
        dacapo_store("import", "best.pt", "finetune_from_best", "0")
        section("prune")
        dacapo_store("prune", "cells_unet_lr1e-4", "--keep-last", "2", "--keep-every", "5000", "--dry-run")
        section("gc")
        seed_garbage()
        dacapo_store("gc", "--dry-run")
        dacapo_store("gc")
        section("verify")
        dacapo_store("verify")
        section("du")
        dacapo_store("du")
        section("plot")
        dacapo_store("plot", "cells_unet_lr1e-4", "-o", "cells_unet_lr1e-4.png")
        shutil.copyfile("cells_unet_lr1e-4.png", PLOT_COPY)
        section("doctor")
        dacapo_store("doctor")
        section("errors")
        dacapo_store("checkpoints", "no_such_run")
        dacapo_store("gc", "--older-than", "5m")
        dacapo_store("du", "--store", "lab-stroe")
        dacapo_store("runs", "--store", "mongodb://admin:hunter2@127.0.0.1:9/lab")
        dacapo_store("runs", "--store", "mongodb://admin:hunter2/x@127.0.0.1:9/lab")
    finally:
        os.chdir("/")
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main_script())
