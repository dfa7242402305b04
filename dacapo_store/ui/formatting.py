"""How the dashboard's templates show numbers, sizes and times (Jinja2 filters)."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

from ..cli.ops_commands import human_bytes


def score(value: float | None) -> str:
    """A score with 4 significant digits; ``None`` (NaN) as ``nan``."""
    return "nan" if value is None else f"{value:.4g}"


def timestamp(value: float | None) -> str:
    """A POSIX time as ``YYYY-MM-DD HH:MM:SS UTC``; ``None`` as an empty string."""
    return "" if value is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


def age(value: float | None, now: float) -> str:
    """How long before ``now`` ``value`` was: ``"42 s ago"``, ``"5 min ago"``, ``"3 h ago"``,
    ``"2 days ago"``."""
    if value is None:
        return ""
    seconds = max(0.0, now - value)
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h ago"
    return f"{seconds // 86400:.0f} days ago"


def direction(higher_is_better: bool | None) -> str:
    """``"higher is better"`` / ``"lower is better"``."""
    return "higher is better" if higher_is_better else "lower is better"


def arrow(higher_is_better: bool | None) -> str:
    """``↑`` for higher is better, ``↓`` for lower is better."""
    return "\u2191" if higher_is_better else "\u2193"


def pretty_json(value: Any) -> str:
    """Indented JSON with sorted keys (the templates escape it)."""
    return json.dumps(value, indent=2, sort_keys=True, allow_nan=True, ensure_ascii=False)


def short_digest(digest: str) -> str:
    """``xxh3-128:0123456789abcdef...`` -> ``xxh3-128:0123456789ab``."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}:{hexdigest[:12]}"


FILTERS = {
    "score": score,
    "timestamp": timestamp,
    "age": age,
    "direction": direction,
    "arrow": arrow,
    "pretty_json": pretty_json,
    "short_digest": short_digest,
    "human_bytes": human_bytes,
}


def query_url(path: str, **params: Any) -> str:
    """``path`` with ``params`` as its query, every value percent-encoded (lists repeat the
    key; ``None`` values are left out)."""
    pairs = [
        (key, item)
        for key, value in params.items()
        if value is not None
        for item in (value if isinstance(value, (list, tuple)) else [value])
    ]
    return f"{path}?{urlencode(pairs)}" if pairs else path


def run_url(name: str) -> str:
    """The run page of ``name``."""
    return query_url("/run", name=name)


FILTERS.update(run_url=run_url, query_url=query_url)
