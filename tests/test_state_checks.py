"""The loadability check agrees with torch itself: the catalogue of values the contract suite
stores (``dacapo_store.testing.state_values``) is sorted as ``torch.load(weights_only=True)``
sorts it, and the check accepts every type torch's weights-only unpickler allows."""

from __future__ import annotations

import io
import warnings
from typing import Any

import pytest
import torch
from torch._weights_only_unpickler import _get_allowed_globals

from dacapo_store.state_checks import ACCEPTED_TYPES, check_loadable_state
from dacapo_store.testing.state_values import LOADABLE_VALUES, REFUSED_VALUES


def torch_reads_back(value: Any) -> bool:
    """Whether ``torch.save`` writes ``{"x": value}`` and a weights-only load reads it."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.save({"x": value}, buffer)
        except Exception:
            return False
        buffer.seek(0)
        try:
            torch.load(buffer, weights_only=True)
        except Exception:
            return False
    return True


@pytest.mark.parametrize("make", LOADABLE_VALUES)
def test_what_torch_reads_back_is_accepted(make) -> None:
    value = make()
    assert torch_reads_back(value)
    check_loadable_state({"x": value}, "state")


@pytest.mark.parametrize("make", REFUSED_VALUES)
def test_what_torch_refuses_is_refused(make) -> None:
    value = make()
    assert not torch_reads_back(value)
    with pytest.raises(TypeError, match=r"\bstate\b.* which torch.load\(weights_only=True\) refuses"):
        check_loadable_state({"x": value}, "state")


def test_every_type_the_weights_only_unpickler_allows_is_accepted() -> None:
    """Catches a torch upgrade that allows more than the check knows (the legacy tensor and
    storage classes only name how a tensor was saved: their objects are plain tensors)."""
    allowed_types = {
        value
        for value in _get_allowed_globals().values()
        if isinstance(value, type) and not value.__name__.endswith(("Tensor", "Storage"))
    }
    allowed_types |= {torch.Tensor, torch.UntypedStorage, torch.TypedStorage}
    assert allowed_types <= ACCEPTED_TYPES, allowed_types - ACCEPTED_TYPES


@pytest.mark.parametrize(
    "dtype", sorted({v for v in _get_allowed_globals().values() if isinstance(v, torch.dtype)}, key=str)
)
def test_every_dtype_object_is_accepted(dtype: torch.dtype) -> None:
    assert torch_reads_back(dtype)
    check_loadable_state({"dtype": dtype}, "state")


def test_messages_name_the_path_the_type_and_the_fix() -> None:
    import numpy as np

    cases = [
        ({"w": np.ones(2)}, "state['w'] is a numpy.ndarray", "torch.from_numpy(x)"),
        ({"groups": [{"lr": np.float32(0.1)}]}, "state['groups'][0]['lr'] is a numpy.float32", "float(x)"),
        ({np.int64(3): 1}, "a key of state is a numpy.int64", "int(x)"),
        ({"m": torch.nn.ReLU()}, "state['m'] is a torch.nn.modules.activation.ReLU", "module.state_dict()"),
    ]
    for state, start, fix in cases:
        with pytest.raises(TypeError) as caught:
            check_loadable_state(state, "state")
        assert str(caught.value).startswith(start) and fix in str(caught.value)


def test_shared_and_cyclic_containers_are_walked_once(monkeypatch) -> None:
    import numpy as np

    from dacapo_store import state_checks

    tensors = [torch.ones(1), torch.zeros(1), torch.full((1,), 2.0)]
    shared = list(tensors)
    state: dict = {"a": shared, "b": shared, "nested": {"again": shared}}
    state["self"] = state
    looked_at: list[int] = []
    is_plain_leaf = state_checks._is_plain_leaf

    def counting(value: Any) -> bool:
        looked_at.append(id(value))
        return is_plain_leaf(value)

    monkeypatch.setattr(state_checks, "_is_plain_leaf", counting)
    assert check_loadable_state(state, "state") is None  # the cycle ends the walk, not the depth limit
    assert [looked_at.count(id(tensor)) for tensor in tensors] == [1, 1, 1]  # three references, one walk
    assert looked_at.count(id(shared)) == 3 and looked_at.count(id(state)) == 1
    shared.append(np.float32(1.0))  # a refusal inside a shared container is still found
    with pytest.raises(TypeError, match=r"^state\['(a|b|nested)'\](\['again'\])?\[3\] is a numpy.float32"):
        check_loadable_state(state, "state")


@pytest.mark.parametrize("place", ["value", "key", "list item"])
def test_integers_too_large_for_the_weights_only_unpickler_are_refused_and_the_largest_it_reads_accepted(place) -> None:
    def state(number: int) -> dict:
        return {"value": {"x": number}, "key": {number: 1}, "list item": {"x": [1, number]}}[place]

    largest, too_large = 2**2039 - 1, 2**2039
    assert torch_reads_back(largest) and not torch_reads_back(too_large)
    check_loadable_state(state(largest), "state")
    check_loadable_state(state(-largest), "state")
    with pytest.raises(ValueError, match=r"\bstate\b.* is an integer of 2040 bits, which torch.load\(weights_only=True\) refuses"):
        check_loadable_state(state(too_large), "state")
