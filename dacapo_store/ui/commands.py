"""The command lines a run page shows for its best checkpoints: real ``dacapo-store``
commands, quoted for a POSIX shell, with the store as the page names it (a URI's password
replaced by ``***``). Names come after ``--``, so that a run named ``-x`` stays an argument."""

from __future__ import annotations

import shlex


def best_command(run: str, dataset: str, criterion: str, store_label: str) -> str:
    """``dacapo-store best --store S -- RUN DATASET CRITERION``: the best checkpoint and its score."""
    return shlex.join(["dacapo-store", "best", "--store", store_label, "--", run, dataset, criterion])


def export_command(run: str, iteration: int, store_label: str) -> str:
    """``dacapo-store export --store S -o FILE -- RUN ITERATION``: the checkpoint as a file for
    ``torch.load`` (``FILE`` in the working directory, named after the run and iteration)."""
    output = "./" + f"{run}-{iteration}.pt".replace("/", "_")
    return shlex.join(["dacapo-store", "export", "--store", store_label, "-o", output, "--", run, str(iteration)])


def load_snippet(run: str, iteration: int, store_label: str) -> str:
    """Python that loads the checkpoint's weights from the store (the API's
    ``retrieve_weights``)."""
    return (
        "from dacapo_store import create_weights_store\n"
        f"weights = create_weights_store({store_label!r}, read_only=True).retrieve_weights({run!r}, {iteration})"
    )


def prune_dry_run_command(run: str, keep_last: int | None, keep_every: int | None, keep_best: bool, store_label: str) -> str:
    """``dacapo-store prune --dry-run ...``: what the retention rules shown would remove."""
    options = ["--store", store_label, "--dry-run"]
    if keep_last is not None:
        options += ["--keep-last", str(keep_last)]
    if keep_every is not None:
        options += ["--keep-every", str(keep_every)]
    if keep_best:
        options.append("--keep-best")
    return shlex.join(["dacapo-store", "prune", *options, "--", run])
