"""Run every command shown in the docs and compare its output with the docs (CI runs this).

Every fenced block tagged ``console`` in the pages listed in ``PAGES`` is a session of
``$ dacapo-store ...`` lines, each followed by what that command prints (stdout and stderr). This
script seeds one local store (``lab-store`` in a fresh temporary directory, addressed through
``$DACAPO_STORE_URI`` as the pages say) with two training runs, runs the commands of all blocks
in page order through click's test runner, and compares each command's output with the block.
Every block tagged ``pycon`` in the pages listed in ``PYTHON_PAGES`` is a Python session, run by
:mod:`doctest` (one namespace per page; ``...`` in a traceback stands for its frames). Blocks
tagged ``text`` are not run: they are samples that say so where they stand (the demo, a MongoDB
deployment).

Usage, from the repository root::

    python docs/check_examples.py           # exit 1, with a diff, if any block is out of date
    python docs/check_examples.py --write   # rewrite the blocks (and docs/plot-example.png)

What varies from run to run or machine to machine is normalised on both sides before comparing,
by these rules and no others:

- the temporary directory is shown as ``/home/alice`` (``--write`` writes it so);
- times of day ``YYYY-MM-DD hh:mm:ss`` (when a checkpoint was stored) match any time;
- digests ``xxh3-128:<hex>`` match any digest (the tensors' last bits depend on the CPU's kernels);
- 32-digit hex tokens (payload names of uploads) match any token;
- in ``error: cannot reach MongoDB`` lines, the words after ``(waited N s).`` are pymongo's own
  and match anything.

Sizes, counts, scores and every other word are compared exactly: a change of the payload format
or of a command's wording fails CI until the docs are rewritten (``--write``) and reviewed.
``--write`` rewrites ``console`` blocks only; a failing ``pycon`` session is edited by hand.
"""

from __future__ import annotations

import difflib
import doctest
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from click.testing import CliRunner

from dacapo_store import TrainingIterationStats, Weights, create_stats_store, create_weights_store
from dacapo_store.cli import main
from dacapo_store.weights_store import Reservation

DOCS = Path(__file__).resolve().parent
PAGES = ["operations.md"]
"""Pages whose ``console`` blocks are run, in this order (one session)."""
PYTHON_PAGES = ["concepts.md"]
"""Pages whose ``pycon`` blocks are run by doctest."""
SHOWN_HOME = "/home/alice"
STORE = "lab-store"
DATASET = "validate"
PLOT = "cells_unet_lr1e-4.png"
RUNS = {
    # run name: (checkpoint iterations, iteration where dice peaks)
    "cells_unet_lr1e-3": (range(1000, 5000, 1000), 8000),
    "cells_unet_lr1e-4": (range(1000, 11000, 1000), 6000),
}
BLOCK = re.compile(r"^```console\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
PYTHON_BLOCK = re.compile(r"^```pycon\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
VARYING = [
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"), "YYYY-MM-DD hh:mm:ss"),
    (re.compile(r"xxh3-128:[0-9a-f]+"), "xxh3-128:<digest>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<token>"),
    (re.compile(r"^(error: cannot reach MongoDB .*?\(waited \d+ s\)\.).*$", re.MULTILINE), r"\1 <pymongo's words>"),
]


@dataclass
class Command:
    args: list[str]
    shown: str
    """The output the docs show."""
    blank_after: bool
    """Whether the docs leave an empty line between this command's output and the next command."""


def parse(block: str) -> list[Command]:
    """The commands of a ``console`` block, each with the output shown under it."""
    commands: list[Command] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            argv = shlex.split(line[2:])
            if argv[0] != "dacapo-store":
                raise SystemExit(f"a console block runs only dacapo-store, not: {line}")
            commands.append(Command(argv[1:], "", False))
        elif not commands:
            raise SystemExit(f"a console block must start with a `$ dacapo-store` line, not: {line}")
        else:
            commands[-1].shown += line + "\n"
    for command in commands:
        command.blank_after = command.shown.endswith("\n\n")
        command.shown = command.shown.rstrip("\n") + "\n" if command.shown.strip() else ""
    return commands


def render(commands: list[Command]) -> str:
    return "".join(
        f"$ dacapo-store {shlex.join(c.args)}\n{c.shown}" + ("\n" if c.blank_after else "") for c in commands
    )


def normalise(text: str) -> str:
    for pattern, replacement in VARYING:
        text = pattern.sub(replacement, text)
    return text


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
    """What ``gc`` finds: an upload whose writer died two hours ago after writing its model
    part, and a ``.partial`` file that no upload owns (built through the store's internals, as
    a killed writer leaves them)."""
    weights = create_weights_store(STORE)
    reservation = Reservation.new("cells_unet_lr1e-4", 11000)
    weights._reserve(reservation, False)
    weights._write_part(reservation, "model", toy_weights(11000).model)
    with weights.catalog.transaction() as db:
        db.execute(
            "UPDATE checkpoints SET heartbeat = ? WHERE token = ?", (time.time() - 7200, reservation.token)
        )
    (weights.payload_dir / f"{uuid.uuid4().hex}.optimizer.pt.partial").write_bytes(b"\0" * 70000)


def run_session(commands: list[Command], home: str) -> list[str]:
    """Run ``commands`` in order on a freshly seeded store; what each printed, with ``home``
    shown as ``SHOWN_HOME``."""
    seed_store()
    outputs, garbage_seeded = [], False
    for command in commands:
        if command.args[0] == "gc" and not garbage_seeded:
            seed_garbage()
            garbage_seeded = True
        output = CliRunner().invoke(main, command.args).output
        outputs.append(output.replace(home, SHOWN_HOME))
    return outputs


def failed_python_sessions() -> int:
    """Run the ``pycon`` blocks of ``PYTHON_PAGES`` with doctest; how many examples failed
    (doctest prints each failure)."""
    failed = 0
    for page in PYTHON_PAGES:
        source = "\n".join(PYTHON_BLOCK.findall((DOCS / page).read_text()))
        test = doctest.DocTestParser().get_doctest(source, {}, page, str(DOCS / page), 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        failed += runner.run(test).failed
    return failed


def main_script(write: bool) -> int:
    pages = {page: (DOCS / page).read_text() for page in PAGES}
    blocks = {page: [parse(match[1]) for match in BLOCK.finditer(text)] for page, text in pages.items()}
    commands = [command for page in PAGES for block in blocks[page] for command in block]
    directory = Path(tempfile.mkdtemp(prefix="dacapo-store-examples-")).resolve()
    previous = os.getcwd()
    os.chdir(directory)
    os.environ["DACAPO_STORE_URI"] = STORE
    try:
        outputs = run_session(commands, str(directory))
        if write:
            shutil.copyfile(PLOT, DOCS / "plot-example.png")
    finally:
        os.chdir(previous)
        shutil.rmtree(directory, ignore_errors=True)
    stale = 0
    for command, output in zip(commands, outputs):
        if normalise(output) != normalise(command.shown):
            stale += 1
            if not write:
                print(f"docs out of date: `dacapo-store {shlex.join(command.args)}` prints", file=sys.stderr)
                sys.stderr.writelines(difflib.unified_diff(
                    normalise(command.shown).splitlines(True), normalise(output).splitlines(True), "docs", "now"))
        command.shown = output
    if write:
        for page, text in pages.items():
            rendered = iter(render(block) for block in blocks[page])
            (DOCS / page).write_text(BLOCK.sub(lambda _: f"```console\n{next(rendered)}```\n", text))
        print(f"checked {len(commands)} commands; rewrote {stale} output(s)")
        return 0
    failed = failed_python_sessions()
    if stale:
        print(f"{stale} of {len(commands)} outputs differ: run `python docs/check_examples.py --write` "
              "and review the diff", file=sys.stderr)
    if failed:
        print(f"{failed} Python example(s) of {', '.join(PYTHON_PAGES)} failed (doctest, above)", file=sys.stderr)
    if stale or failed:
        return 1
    print(f"ok: the output of {len(commands)} commands and the Python sessions of {', '.join(PYTHON_PAGES)} "
          "match the docs")
    return 0


if __name__ == "__main__":
    sys.exit(main_script("--write" in sys.argv[1:]))
