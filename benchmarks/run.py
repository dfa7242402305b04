"""``python -m benchmarks``: the performance tables of dacapo-store (see docs/performance.md).

The timed rows put dacapo-store beside the previous release (0.5.0, in a venv of its own),
safetensors and the floor, in the same interleaved rounds (see :mod:`benchmarks.speed`); torch
runs on one thread everywhere. The other figures (memory, bytes read, queries, CUDA, dashboard)
follow. The tables are printed and written to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import torch

from . import cases, dashboard, release, speed
from .table import Row, markdown, side_by_side, targets_met
from .workloads import MB

QUICK = {"sizes": [2.0], "rounds": 2, "small_tensors": 100, "scores": [10, 100], "model_only_size": 2.0,
         "dashboard": [10, 100], "memory_size": 2.0}
"""``--quick``: tiny sizes and 2 rounds, to check that every row runs (its numbers mean nothing)."""


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--sizes", type=float, nargs="+", default=[100],
                        help="model sizes in MB; each checkpoint holds 3x that with Adam (default 100; "
                        "add 1000 for the 1 GB case: two workers holding several copies of it need about 45 GB of free RAM)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per timed row (default 7)")
    parser.add_argument("--small-tensors", type=int, default=5000,
                        help="parameters of the many-small-tensors checkpoint (with Adam: 4x as many tensors, "
                        "8 MB; default 5000, 0 skips it)")
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="skip the cold page cache rows")
    parser.add_argument("--baseline-release", metavar="REV_OR_PATH",
                        help=f"the previous release: a git revision of this repository or a checkout's path "
                        f"(default {release.RELEASE_0_5_0}, 0.5.0; with --quick, none; 'none' skips it)")
    parser.add_argument("--baseline-python", metavar="PYTHON",
                        help="the release's interpreter (default: a venv built once under benchmarks/results/)")
    parser.add_argument("--scores", type=int, nargs=2, default=[100, 100_000], help="score counts compared by figure 8")
    parser.add_argument("--model-only-size", type=float, default=20, help="model size in MB for figure 7 (default 20)")
    parser.add_argument("--dashboard", type=int, nargs=2, default=[1000, 100_000], metavar=("RUNS", "SCORES"),
                        help="runs and scores of the store whose dashboard figure 10 times (default 1000 100000)")
    parser.add_argument("--memory-size", type=float, default=1000,
                        help="state dict size in MB for figure 6 (default 1000; needs about 4x that of free RAM)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, 2 rounds, no release unless --baseline-release: checks that every row runs")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if args.baseline_release is None and not args.quick:
        args.baseline_release = release.RELEASE_0_5_0
    if args.baseline_release == "none":
        args.baseline_release = None
    return args


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    torch.set_num_threads(1)
    command = "python -m benchmarks" + "".join(f" {shlex.quote(arg)}" for arg in (sys.argv[1:] if argv is None else argv))
    started = time.time()
    baseline = release.prepare(args.baseline_release, args.baseline_python) if args.baseline_release else None
    timed = speed.timed_rows(baseline, [int(size * MB) for size in args.sizes], args.small_tensors, args.rounds,
                             args.cold)
    rows: list[Row] = []
    rows += cases.memory(int(args.memory_size * MB))
    rows += cases.model_only(int(args.model_only_size * MB))
    rows += cases.lookups(*args.scores, repeat=args.rounds)
    rows += cases.cuda(int(max(args.sizes) * MB), args.rounds)
    rows += dashboard.runs_page(*args.dashboard, rounds=args.rounds)
    elapsed = time.time() - started
    report = [
        f"`{command}` on {platform.node()} ({os.cpu_count()} CPUs), torch {torch.__version__} on 1 thread, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {elapsed:.0f} s; 0.5.0 = "
        f"{baseline.label if baseline else 'not run'}; medians of {args.rounds} rounds (min-max); "
        "ratios: baseline time over ours (above 1: ours is faster), per-round range.",
        "",
        *side_by_side(timed),
        "",
        "Other figures:",
        "",
        *markdown(rows),
    ]
    missed = [result for result in timed if not targets_met(result)] + [row for row in rows if row.ok is False]
    if missed:
        report += ["", f"{len(missed)} row(s) missed their target (timings vary run to run; rerun to confirm)."]
    text = "\n".join(report)
    print(text, flush=True)
    release.CACHE.mkdir(parents=True, exist_ok=True)
    path = release.CACHE / f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(text + "\n")
    print(f"\n(written to {path})", file=sys.stderr)


if __name__ == "__main__":
    main()
