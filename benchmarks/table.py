"""The rows of the performance tables, and how they are printed (markdown)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .timing import Samples
from .workloads import MB

if TYPE_CHECKING:
    from .speed import Result


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


HEADER = ("figure", "case", "dacapo-store: median (min)", "baseline", "baseline: median (min)",
          "ratio (per-round range)", "target", "ok")


def markdown(rows: list[Row]) -> list[str]:
    """``rows`` as the lines of a markdown table."""
    return _markdown(HEADER, [
        (r.figure, r.case, r.ours, r.against, r.baseline, r.ratio, r.target,
         "skip" if r.ok is None else ("yes" if r.ok else "NO"))
        for r in rows
    ])


def _spread(samples: Samples, name: str) -> str:
    """``median (min-max)`` of a contender's times."""
    seconds = samples.seconds[name]
    return f"{_time(samples.median(name))} ({_time(min(seconds))}-{_time(max(seconds))})"


def _ratio(samples: Samples, slower: str, faster: str) -> tuple[float, str]:
    """``slower``'s median time over ``faster``'s, and as text with the range of the per-round ratios."""
    ratio = samples.median(slower) / samples.median(faster)
    rounds = samples.ratios(slower, faster)
    return ratio, f"{ratio:.2f}x ({min(rounds):.2f}-{max(rounds):.2f})"


SIDE_BY_SIDE = ("row", "ours", "0.5.0", "safetensors", "floor", "0.5.0 / ours", "safetensors / ours", "ours / floor",
                "target", "met")


def _cached(resident: dict[str, int | None]) -> str:
    """What ``fincore`` found cached after the evictions: the contenders that kept over 1 MiB."""
    if None in resident.values():
        return "eviction not checked: no fincore"
    kept = [f"{name} {cached / MB:.0f} MB" for name, cached in resident.items() if cached > 2**20]
    return "fincore: still cached " + ", ".join(kept) if kept else "fincore: evicted"


def targets_met(result: Result) -> bool:
    """Whether every target of ``result`` whose baseline ran is met (on the medians)."""
    samples = result.samples
    return all(samples.median(baseline) / samples.median("ours") >= limit
               for baseline, limit in result.spec.targets.items() if baseline in samples.seconds)


def side_by_side(results: list[Result]) -> list[str]:
    """The timed rows as the lines of a markdown table: every contender's median time (min-max
    over rounds), the baselines' time over ours (above 1: ours is faster; per-round range), our
    time over the floor's (how far from copying the bytes once), and whether the row's targets
    are met (a target whose baseline did not run is left out, and said so)."""
    lines = []
    for result in results:
        samples, names = result.samples, result.samples.seconds
        label = result.label
        if result.spec.cold:
            label += f" ({_cached(result.resident)})"
        cells = [label] + [_spread(samples, name) if name in names else "-"
                           for name in ("ours", "0.5.0", "safetensors", "floor")]
        cells += [_ratio(samples, baseline, "ours")[1] if baseline in names else "-" for baseline in ("0.5.0", "safetensors")]
        cells.append(_ratio(samples, "ours", "floor")[1] if "floor" in names else "-")
        targets = result.spec.targets
        cells.append(", ".join(f">= {limit:g}x {baseline}" for baseline, limit in targets.items()))
        missing = [baseline for baseline in targets if baseline not in names]
        verdict = "met" if targets_met(result) else "NOT met"
        cells.append(verdict + (f" ({', '.join(missing)} not run)" if missing else ""))
        lines.append(tuple(cells))
    return _markdown(SIDE_BY_SIDE, lines)


def _markdown(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> list[str]:
    lines = [header] + lines
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |" for line in lines]
    text.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return text
