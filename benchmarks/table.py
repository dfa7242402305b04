"""The rows of the performance table, and how they are printed (markdown)."""

from __future__ import annotations

from dataclasses import dataclass

from .timing import Samples


@dataclass
class Row:
    """One line of the table: ``ours`` against ``baseline`` (what it is: ``against``), their
    ``ratio`` and the ``target`` it is held to (``ok`` is ``None`` for a skipped figure)."""

    figure: str
    case: str
    ours: str
    against: str
    baseline: str
    ratio: str
    target: str
    ok: bool | None


def _time(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.0995 else f"{seconds * 1e3:.1f} ms"


def timing(samples: Samples, name: str) -> str:
    """``median (min)`` of a contender's times."""
    return f"{_time(samples.median(name))} (min {_time(samples.minimum(name))})"


def faster_rows(
    figure: str, case: str, samples: Samples, ours: str, baselines: dict[str, str], target: float = 1.0
) -> list[Row]:
    """One row per baseline (contender name -> what it is): the baseline's median time over
    ours (above 1: ours is faster), with the spread of the per-round ratios, held to ``target``."""
    rows = []
    for name, label in baselines.items():
        ratios = samples.ratios(name, ours)
        ratio = samples.median(name) / samples.median(ours)
        rows.append(Row(
            figure, case, timing(samples, ours), label, timing(samples, name),
            f"{ratio:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})", f">= {target:g}x", ratio >= target,
        ))
    return rows


def fraction_row(figure: str, case: str, samples: Samples, ours: str, baseline: str, label: str, limit: float) -> Row:
    """Our median time as a fraction of the baseline's (below 1: ours takes less), with the
    spread of the per-round fractions, held to at most ``limit``."""
    fraction = samples.median(ours) / samples.median(baseline)
    fractions = [1 / ratio for ratio in samples.ratios(baseline, ours)]
    return Row(
        figure, case, timing(samples, ours), label, timing(samples, baseline),
        f"{fraction:.2f}x ({min(fractions):.2f}-{max(fractions):.2f})", f"<= {limit:g}x", fraction <= limit,
    )


HEADER = ("figure", "case", "dacapo-store: median (min)", "baseline", "baseline: median (min)",
          "ratio (per-round range)", "target", "ok")


def markdown(rows: list[Row]) -> list[str]:
    """``rows`` as the lines of a markdown table."""
    lines = [HEADER] + [
        (r.figure, r.case, r.ours, r.against, r.baseline, r.ratio, r.target,
         "skip" if r.ok is None else ("yes" if r.ok else "NO"))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    text = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |" for line in lines]
    text.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return text
