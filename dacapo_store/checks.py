"""Validation of user input at the store boundary.

Run, dataset and criterion names are user strings. They are stored as values (never as MongoDB
field names or file paths), but are still checked so that a bad value fails loudly, before
anything is written, with a message that names it.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

MAX_NAME_LENGTH = 1024
MAX_ITERATION = 2**63 - 1
MAX_PARAMETERS_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 64
"""How deeply score parameters and run configs may nest."""


def check_name(value: Any, what: str) -> str:
    """Return ``value`` if it is a valid run/dataset/criterion name.

    Raises:
        TypeError: ``value`` is not a ``str``.
        ValueError: empty, longer than :data:`MAX_NAME_LENGTH`, contains NUL, or starts with ``$``.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} name must be a str, got {type(value).__name__}: {value!r}")
    if not value:
        raise ValueError(f"{what} name must not be empty")
    if "\x00" in value:
        raise ValueError(f"{what} name must not contain NUL characters: {value!r}")
    if value.startswith("$"):
        raise ValueError(f"{what} name must not start with '$': {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{what} name is {len(value)} characters long, at most {MAX_NAME_LENGTH} allowed: "
            f"{value[:40]!r}..."
        )
    check_unicode(value, f"{what} name")
    return value


def check_unicode(text: str, what: str) -> str:
    """Return ``text`` if UTF-8 can encode it (every store keeps UTF-8).

    Raises:
        ValueError: a lone surrogate (e.g. from ``os.fsdecode`` of undecodable bytes), naming
            ``what`` and the position.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{what} is not valid Unicode: a lone surrogate {text[error.start]!r} at position "
            f"{error.start} ({text[:40]!r})"
        ) from None
    return text


def check_iteration(value: Any) -> int:
    """Return ``value`` as an ``int`` if it is a valid iteration (an int >= 0, not a bool).

    Raises:
        TypeError: not an integer (``bool`` and ``float`` included).
        ValueError: negative or beyond a 64-bit signed integer.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"iteration must be an int, got {type(value).__name__}: {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"iteration must be >= 0, got {value}")
    if value > MAX_ITERATION:
        raise ValueError(f"iteration must be < 2**63, got {value}")
    return value


def run_name_of(run: Any) -> str:
    """Return the checked name of ``run`` (a run object with ``.name``, or a name).

    Raises:
        TypeError / ValueError: as :func:`check_name`.
    """
    name = run if isinstance(run, str) else getattr(run, "name", run)
    return check_name(name, "run")


def dataset_name_of(dataset: Any) -> str:
    """Return the checked name of ``dataset`` (a dataset object with ``.name``, as DaCapo
    passes, or a name).

    Raises:
        TypeError / ValueError: as :func:`check_name`.
    """
    name = dataset if isinstance(dataset, str) else getattr(dataset, "name", dataset)
    return check_name(name, "dataset")


def check_score(value: Any, criterion: str) -> float:
    """Return ``value`` as a float if it is a real number (NaN and +-inf allowed; bool is not).

    Raises:
        TypeError: not a real number.
        ValueError: an integer too large for a float.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"score of criterion {criterion!r} must be a real number, got "
            f"{type(value).__name__}: {value!r}"
        )
    try:
        return float(value)
    except OverflowError:
        raise ValueError(
            f"score of criterion {criterion!r} is too large for a float: {str(value)[:40]}..."
        ) from None


def check_scores(
    scores: Any, higher_is_better: Any
) -> list[tuple[str, float, bool]]:
    """Validate a criterion -> score mapping and its criterion -> direction mapping.

    Returns:
        ``(criterion, score, higher_is_better)`` triples, in ``scores`` order.

    Raises:
        TypeError: not mappings, a score that is not a real number, a direction that is not a bool.
        ValueError: a bad criterion name, or a criterion without a direction.
    """
    if not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a mapping criterion -> float, got {type(scores).__name__}")
    if not isinstance(higher_is_better, Mapping):
        raise TypeError(
            "higher_is_better must be a mapping criterion -> bool, got "
            f"{type(higher_is_better).__name__}"
        )
    checked = []
    for criterion, value in scores.items():
        check_name(criterion, "criterion")
        if criterion not in higher_is_better:
            raise ValueError(f"higher_is_better has no entry for criterion {criterion!r}")
        direction = higher_is_better[criterion]
        if not isinstance(direction, bool):
            raise TypeError(
                f"higher_is_better[{criterion!r}] must be a bool, got {type(direction).__name__}"
            )
        checked.append((criterion, check_score(value, criterion), direction))
    return checked


def parameters_key(parameters: Any) -> str:
    """Return the canonical JSON text of a post-processing parameters mapping (``{}`` for None).

    The text is what the stores keep: it identifies a parameter set and is never used as a
    field name. Keys must be strings; values JSON types with finite numbers (see
    :func:`check_json_value`).

    Raises:
        TypeError: not a mapping, a non-string key, or a value JSON cannot encode.
        ValueError: a non-finite number, a lone surrogate, nesting deeper than
            :data:`MAX_JSON_DEPTH` or a cycle, or more than :data:`MAX_PARAMETERS_JSON_BYTES`
            of JSON.
    """
    if parameters is None:
        return "{}"
    if not isinstance(parameters, Mapping):
        raise TypeError(f"parameters must be a mapping or None, got {type(parameters).__name__}")
    check_json_value(parameters, "parameters")
    text = json.dumps(parameters, sort_keys=True, separators=(",", ":"), allow_nan=False)
    if len(text.encode()) > MAX_PARAMETERS_JSON_BYTES:
        raise ValueError(
            f"parameters take {len(text.encode())} bytes of JSON, at most "
            f"{MAX_PARAMETERS_JSON_BYTES} allowed"
        )
    return text


def check_json_value(value: Any, where: str) -> None:
    """Check that ``value`` is plain JSON data that every store keeps as it is: ``None``,
    ``bool``, ``int``, finite ``float``, valid-Unicode ``str``, and lists, tuples and
    string-keyed mappings of them, nested at most :data:`MAX_JSON_DEPTH` levels, without cycles.

    One iterative walk (no recursion limit to hit); errors name the offending item, e.g.
    ``parameters['post'][0]``.

    Raises:
        TypeError: a value of another type, or a non-string key.
        ValueError: a non-finite number, a lone surrogate, too deep a nesting, or a container
            that contains itself.
    """
    pending: list[tuple[Any, str, frozenset[int]]] = [(value, where, frozenset())]
    while pending:
        item, path, ancestors = pending.pop()
        if item is None or isinstance(item, (bool, int)):
            continue
        if isinstance(item, str):
            check_unicode(item, path)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{path} must be a finite number, got {item!r}")
        elif isinstance(item, (Mapping, list, tuple)):
            if id(item) in ancestors:
                raise ValueError(f"{path} contains itself (a cycle): it cannot be stored as JSON")
            if len(ancestors) >= MAX_JSON_DEPTH:
                raise ValueError(f"{path[:120]}... is nested more than {MAX_JSON_DEPTH} levels deep")
            inner = ancestors | {id(item)}
            if isinstance(item, Mapping):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise TypeError(f"{path} has a non-string key {key!r}")
                    check_unicode(key, f"a key of {path}")
                    pending.append((child, f"{path}[{key!r}]", inner))
            else:
                pending.extend((child, f"{path}[{index}]", inner) for index, child in enumerate(item))
        else:
            raise TypeError(f"{path} is not JSON-able: {type(item).__name__} {item!r}")
