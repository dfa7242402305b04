"""Refusing, before anything is stored, a state dict that could never be read back.

Checkpoints are read with ``torch.load(weights_only=True)``, whose unpickler accepts only
tensors, a few torch types and plain Python containers and scalars. ``torch.save`` writes
anything, so a state dict holding, say, a numpy float in an optimizer's ``param_groups`` would
be stored, verified and listed, and then refused by every read. :func:`check_loadable_weights`
walks a state dict once (no serialization) and raises a ``TypeError`` that names the first value
such a load refuses, with the fix.

The accepted types are those torch 2.13's weights-only unpickler allows by default
(``torch._weights_only_unpickler._get_allowed_globals`` plus the builtin containers and
scalars it handles itself); user additions via ``torch.serialization.add_safe_globals`` are not
honoured, as they would hold only in the process that made them.
"""

from __future__ import annotations

import collections
import enum
from typing import Any

import torch

from .records import Weights

MAX_INT_BITS = 2039
"""Larger integers are refused: pickle writes them with an opcode (``LONG4``) that the
weights-only unpickler does not know (two's complement in at most 255 bytes loads)."""
MAX_STATE_DEPTH = 100
"""Containers nested deeper than this are refused (real state dicts nest a few levels;
``torch.save`` itself fails a few hundred levels down)."""

_SCALARS = frozenset(
    {type(None), bool, int, float, complex, str, bytes, bytearray,
     torch.Size, torch.device, torch.dtype, torch.layout, torch.qscheme,
     torch.UntypedStorage, torch.TypedStorage}
)
"""Leaf values: builtin scalars and the torch types the unpickler allows (storages load back
as typed storages)."""
_MAPPINGS = frozenset({dict, collections.OrderedDict, collections.Counter})
_COLLECTIONS = frozenset({list, tuple, set})
_TENSORS = frozenset({torch.Tensor, torch.nn.Parameter})
ACCEPTED_TYPES = _SCALARS | _MAPPINGS | _COLLECTIONS | _TENSORS
"""Every type a state dict's values and keys may have (exactly: subclasses are refused)."""

_Path = tuple
"""``(parent, step)``: the root is ``(None, name)``; a step is ``(key,)`` for an item,
``".name"`` for a tensor attribute, or :data:`_KEY` / :data:`_ELEMENT`."""
_KEY = "a key of"
_ELEMENT = "an element of"


def check_loadable_weights(weights: Weights) -> None:
    """Check that ``torch.load(weights_only=True)`` would load back both parts of ``weights``.

    Raises:
        TypeError: a value (or key) whose type the weights-only load refuses, named by its
            path (e.g. ``weights.optimizer['param_groups'][0]['lr']``) and type, with the fix.
            Also a tensor, tuple or set that holds itself (which pickle writes as no
            weights-only load reads).
        ValueError: containers nested deeper than :data:`MAX_STATE_DEPTH`, or an integer of
            more than :data:`MAX_INT_BITS` bits.
    """
    check_loadable_state(weights.model, "weights.model")
    check_loadable_state(weights.optimizer, "weights.optimizer")


def check_loadable_state(state: Any, where: str) -> None:
    """Check that ``torch.load(weights_only=True)`` would load back ``state``, named ``where``.

    One iterative walk over every container, key, value and tensor attribute; a container or a
    tensor with attributes met twice (shared or self-referencing, which torch stores once) is
    walked once. Paths are only spelled out for an error.

    Raises:
        TypeError / ValueError: as :func:`check_loadable_weights`.
    """
    seen: set[int] = set()
    pending: list[tuple[Any, _Path, int]] = [(state, (None, where), 0)]
    while pending:
        value, path, depth = pending.pop()
        kind = type(value)
        if kind is int and value.bit_length() > MAX_INT_BITS:
            raise ValueError(
                f"{_short(_spell(path), 120)} is an integer of {value.bit_length()} bits, which "
                f"torch.load(weights_only=True) refuses (at most {MAX_INT_BITS}), so the checkpoint could "
                "never be read back; nothing was stored. Store it as a string instead: str(x)"
            )
        if kind in _SCALARS or (kind in _TENSORS and not vars(value)):
            continue
        if kind not in _TENSORS and kind not in _MAPPINGS and kind not in _COLLECTIONS:
            raise TypeError(_refusal(_spell(path), value))
        if id(value) in seen:
            continue
        seen.add(id(value))
        if kind in _BUILT_FROM_CONTENTS and _holds_itself(value):
            raise TypeError(
                f"{_short(_spell(path), 120)} is a {_type_name(value)} that holds itself (through its "
                f"{'attributes' if kind in _TENSORS else 'items'}), which torch.load(weights_only=True) refuses, "
                "so the checkpoint could never be read back; nothing was stored. Store something that names "
                "it instead (a key, an index)."
            )
        if kind in _TENSORS:  # attributes are kept by torch.save and unpickled like any value
            pending.extend((item, (path, f".{name}"), depth + 1) for name, item in vars(value).items())
            continue
        if depth >= MAX_STATE_DEPTH:
            raise ValueError(
                f"{_short(_spell(path), 120)} nests containers more than {MAX_STATE_DEPTH} levels "
                "deep; nothing was stored"
            )
        if kind in _MAPPINGS:
            for key, item in value.items():
                if not _is_plain_leaf(key):  # a tuple key is walked like any value
                    pending.append((key, (path, _KEY), depth + 1))
                if not _is_plain_leaf(item):
                    pending.append((item, (path, (key,)), depth + 1))
        else:
            for index, item in enumerate(value):
                if not _is_plain_leaf(item):
                    pending.append((item, (path, _ELEMENT if kind is set else (index,)), depth + 1))


_BUILT_FROM_CONTENTS = _TENSORS | {tuple, set}
"""Values that pickle makes from their contents (a tensor from its attributes too), and
remembers only once they are made: one reachable from its own contents is pickled with an
opcode (``POP``) that the weights-only unpickler refuses."""


def _holds_itself(container: Any) -> bool:
    """Whether ``container`` (of :data:`_BUILT_FROM_CONTENTS`) is reachable from its own items or
    attributes, through containers, keys and tensor attributes. True also where pickle's walk
    would happen to meet a dict or list on the way first (then it loads): the rule stays simple,
    and such states are rare."""
    seen: set[int] = set()
    pending = list(vars(container).values() if type(container) in _TENSORS else container)
    while pending:
        value = pending.pop()
        if value is container:
            return True
        kind = type(value)
        if id(value) in seen or kind in _SCALARS or kind is int:
            continue
        seen.add(id(value))
        if kind in _TENSORS:
            pending.extend(vars(value).values())
        elif kind in _MAPPINGS:
            pending.extend(value.keys())
            pending.extend(value.values())
        elif kind in _COLLECTIONS:
            pending.extend(value)
    return False


def _is_plain_leaf(value: Any) -> bool:
    """A scalar, or a tensor without attributes: accepted without a further look (the walk's
    fast path: nearly every value of a state dict is one)."""
    kind = type(value)
    if kind is int:
        return value.bit_length() <= MAX_INT_BITS
    return kind in _SCALARS or (kind in _TENSORS and not vars(value))


def _spell(path: _Path) -> str:
    """``(((None, "weights.optimizer"), ("param_groups",)), (0,))`` ->
    ``"weights.optimizer['param_groups'][0]"``."""
    steps = []
    while path[0] is not None:
        path, step = path
        steps.append(step)
    text = path[1]
    for step in reversed(steps):
        if isinstance(step, tuple):
            text += f"[{_short_repr(step[0])}]"
        elif step in (_KEY, _ELEMENT):
            text = f"{step} {text}"
        else:
            text += step
    return text


def _refusal(path: str, value: Any) -> str:
    """The message for a value of a type that a weights-only load refuses."""
    return (
        f"{path} is a {_type_name(value)} ({_short_repr(value)}), which torch.load(weights_only=True) "
        f"refuses, so the checkpoint could never be read back; nothing was stored. {_fix(value)}"
    )


def _fix(value: Any) -> str:
    """How to turn ``value`` into something a weights-only load accepts."""
    module = type(value).__module__.split(".")[0]
    if module == "numpy":
        if type(value).__name__ == "ndarray":
            return "Store a tensor instead: torch.from_numpy(x) (or x.tolist())."
        return "Store a Python number instead: float(x), int(x) or bool(x) (x.item() gives the right one)."
    if isinstance(value, torch.nn.Module):
        return "Store its state dict instead: module.state_dict()."
    if isinstance(value, torch.Tensor):
        return "Store a plain tensor instead: x.as_subclass(torch.Tensor)."
    if isinstance(value, enum.Enum):
        return "Store its value instead: x.value."
    if isinstance(value, frozenset):
        return "Store a set instead: set(x)."
    if isinstance(value, dict):
        return "Store a plain dict instead: dict(x)."
    if isinstance(value, (tuple, list)):
        return "Store a plain tuple or list instead: tuple(x) or list(x)."
    return (
        "Store only tensors, numbers, strings, bytes, None and dicts, lists, tuples and sets of "
        "them (convert the value, or keep it outside the state dict)."
    )


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _short_repr(value: Any) -> str:
    try:
        return _short(repr(value))
    except Exception:  # a custom object's broken __repr__ must not hide the real problem
        return f"<{_type_name(value)}>"


def _short(text: str, limit: int = 60) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
