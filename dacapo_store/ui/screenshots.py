"""The docs' pictures of the dashboard (docs/ui-*.png), kept current by running this module:

    python -m dacapo_store.ui.screenshots [--output docs] [--store DIR]

It trains a few short demo runs into a fresh local store (unless ``--store`` names one that
holds runs), serves the dashboard on a free port of 127.0.0.1 and photographs the runs page,
a run page and the compare page with headless Chromium (see
:mod:`dacapo_store.testing.browser`): ``ui-runs.png``, ``ui-run.png``, ``ui-compare.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..cli import main as cli_main
from ..testing.browser import chromium, wait_for
from .app import create_app
from .formatting import query_url
from .queries import open_dashboard_stores
from .serving import BackgroundServer

DEMO_RUNS = (120, 80, 40)
"""Iterations of the demo runs the pictures show (named ``demo-N``)."""
COMPARED = ("validate_0", "iou")
DEMO_LABEL = "lab-store"
"""How the pictures name the temporary store of the demo runs (as the docs' examples do)."""


def train_demo_runs(store: Path, iterations: Sequence[int] = DEMO_RUNS) -> list[str]:
    """Train ``dacapo-store demo --iterations N`` into ``store`` for each N; return the run names."""
    names = []
    for count in iterations:
        name = f"demo-{count}"
        with contextlib.redirect_stdout(io.StringIO()):  # the demo's report is not needed here
            cli_main(["demo", "--iterations", str(count), "--name", name, "--store", str(store)], standalone_mode=False)
        names.append(name)
    return names


def plots_drawn(driver, count: int) -> bool:
    """Whether ``count`` plots of the page have been drawn (and its scripts raised nothing)."""
    return driver.execute_script("return document.querySelectorAll('[data-drawn]').length") >= count


def take_screenshots(store: str, runs: Sequence[str], output: Path, label: str | None = None) -> list[Path]:
    """Photograph the dashboard of ``store`` (named ``label`` on the pages, if given): the runs
    page, the page of ``runs[0]`` and the compare page of ``runs`` on :data:`COMPARED`; return
    the PNG files written in ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    dataset, criterion = COMPARED
    pages = [
        ("ui-runs.png", "/", 0, 760),
        ("ui-run.png", query_url("/run", name=runs[0]), 7, 1500),
        ("ui-compare.png", query_url("/compare", run=list(runs), dataset=dataset, criterion=criterion), 1, 820),
    ]
    written = []
    stores = open_dashboard_stores(store)
    if label is not None:
        stores = dataclasses.replace(stores, label=label)
    with BackgroundServer(create_app(stores)) as server, chromium() as driver:
        for filename, path, plots, height in pages:
            driver.set_window_size(1400, height)
            driver.get(server.url + path)
            wait_for(lambda: plots_drawn(driver, plots), f"the plots of {path}")
            target = output / filename
            driver.save_screenshot(str(target))
            written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("docs"), help="directory for the PNG files (default: docs)")
    parser.add_argument("--store", default=None, help="photograph this store's runs instead of training demo runs")
    arguments = parser.parse_args(argv)
    if arguments.store is not None:
        runs = [row.run for row in open_dashboard_stores(arguments.store).weights.run_totals()]
        written = take_screenshots(arguments.store, runs, arguments.output)
    else:
        with tempfile.TemporaryDirectory(prefix="dacapo-store-screenshots-") as directory:
            store = str(Path(directory) / "store")
            runs = train_demo_runs(Path(store))
            written = take_screenshots(store, runs, arguments.output, label=DEMO_LABEL)
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
