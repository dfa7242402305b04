"""``python -m benchmarks``: the performance table of dacapo-store (see docs/performance.md).

Every timed figure compares dacapo-store with the strongest baseline measured in the same
interleaved rounds (see :mod:`benchmarks.speed`); torch runs on one thread on both sides.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import torch

from . import cases, dashboard, speed
from .table import Row, markdown
from .workloads import MB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--sizes", type=float, nargs="+", default=[100],
                        help="model sizes in MB; each checkpoint holds 3x that with Adam (default 100; "
                        "add 1000 for the 1 GB case, which needs about 10 GB of free RAM)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per timed figure (default 7)")
    parser.add_argument("--small-tensors", type=int, default=5000,
                        help="parameters of the many-small-tensors checkpoint (with Adam: 4x as many tensors, "
                        "8 MB; default 5000, 0 skips it)")
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="skip the cold page cache cases")
    parser.add_argument("--no-busy", dest="busy", action="store_false",
                        help="skip the local store case with a CPU hog on one core")
    parser.add_argument("--scores", type=int, nargs=2, default=[100, 100_000], help="score counts compared by figure 8")
    parser.add_argument("--model-only-size", type=float, default=20, help="model size in MB for figure 7 (default 20)")
    parser.add_argument("--dashboard", type=int, nargs=2, default=[1000, 100_000], metavar=("RUNS", "SCORES"),
                        help="runs and scores of the store whose dashboard figure 10 times (default 1000 100000)")
    parser.add_argument("--memory-size", type=float, default=1000,
                        help="state dict size in MB for figure 6 (default 1000; needs about 4x that of free RAM)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    command = "python -m benchmarks" + "".join(f" {shlex.quote(arg)}" for arg in (sys.argv[1:] if argv is None else argv))
    started = time.time()
    rows: list[Row] = []
    for index, size in enumerate(args.sizes):
        rows += speed.timed_rows(int(size * MB), args.rounds, args.cold, args.busy,
                                 args.small_tensors if index == 0 else 0)
    rows += cases.memory(int(args.memory_size * MB))
    rows += cases.model_only(int(args.model_only_size * MB))
    rows += cases.lookups(*args.scores, repeat=args.rounds)
    rows += cases.cuda(int(max(args.sizes) * MB), args.rounds)
    rows += dashboard.runs_page(*args.dashboard, rounds=args.rounds)
    rows.sort(key=lambda row: int(row.figure.split()[0]))
    print(f"`{command}` on {platform.node()}, {torch.get_num_threads()} torch thread, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, {time.time() - started:.0f} s:\n")
    print("\n".join(markdown(rows)), flush=True)
    failed = [row for row in rows if row.ok is False]
    if failed:
        print(f"\n{len(failed)} figure(s) missed their target (timings vary run to run; rerun to confirm).")


if __name__ == "__main__":
    main()
