"""``python -m benchmarks``: the performance table of dacapo-store (see the README)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from . import cases
from .workloads import MB


def _scaling_rows(rows: list[cases.Row], sizes: list[int]) -> Iterable[cases.Row]:
    """Figure 6: throughput at the largest size relative to the smallest, per throughput case."""
    if len(sizes) < 2:
        return
    small, large = f" {min(sizes) // MB} MB", f" {max(sizes) // MB} MB"
    by_case = {(row.figure, row.case): row for row in rows if row.ours.endswith("GB/s")}
    for (figure, case), row in by_case.items():
        if small in case and (figure, case.replace(small, large)) in by_case:
            slow = float(by_case[(figure, case.replace(small, large))].ours.split()[0])
            fast = float(row.ours.split()[0])
            ratio = slow / fast
            yield cases.Row("6 scaling", f"{figure.split()[1]} {case.replace(small, '')}: {large.strip()} vs {small.strip()}",
                            f"{slow:.2f} GB/s", f"{fast:.2f} GB/s", f"{ratio:.2f}x", ">= 0.5x", ratio >= 0.5)


def print_table(rows: list[cases.Row]) -> None:
    """Print ``rows`` as a markdown table."""
    header = ("figure", "case", "dacapo-store", "baseline", "ratio", "target", "ok")
    lines = [header] + [
        (r.figure, r.case, r.ours, r.baseline, r.ratio, r.target, "skip" if r.ok is None else ("yes" if r.ok else "NO"))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |", flush=True)
        if index == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--sizes", type=float, nargs="+", default=[10, 100], help="state dict sizes in MB (default 10 100)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per timing, the fastest counts (default 5)")
    parser.add_argument("--scores", type=int, nargs=2, default=[100, 100_000], help="score counts compared by figure 5")
    parser.add_argument("--model-only-size", type=float, default=20, help="model size in MB for figure 4 (default 20)")
    parser.add_argument("--memory-size", type=float, default=1000,
                        help="state dict size in MB for figure 3 (default 1000; needs about 4x that of free RAM)")
    args = parser.parse_args(argv)
    sizes = [int(size * MB) for size in args.sizes]
    rows: list[cases.Row] = []
    for size in sizes:
        rows += cases.local_throughput(size, args.repeat)
        rows += cases.mongo_throughput(size, args.repeat)
    rows += _scaling_rows(rows, sizes)
    rows += cases.memory(int(args.memory_size * MB))
    rows += cases.model_only(int(args.model_only_size * MB))
    rows += cases.lookups(*args.scores, repeat=args.repeat)
    rows += cases.cuda(max(sizes), args.repeat)
    rows.sort(key=lambda row: int(row.figure.split()[0]))
    print_table(rows)
    failed = [row for row in rows if row.ok is False]
    if failed:
        print(f"\n{len(failed)} figure(s) missed their target (timings vary run to run; rerun to confirm).")


if __name__ == "__main__":
    main()
