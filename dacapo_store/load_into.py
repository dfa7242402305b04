"""Loading a verified checkpoint straight into an existing model and optimizer.

:func:`load_into` gives the result of ``model.load_state_dict(model_state)`` followed by
``optimizer.load_state_dict(optimizer_state)``, but copies each loaded tensor's bytes into the
parameter, buffer or optimizer state tensor that is already there wherever that tensor has the
shape, dtype and device ``load_state_dict`` would give it (one copy; no new state tensors).
Everything else (a missing or differently shaped tensor, a fresh optimizer without state yet,
hooks that may rewrite a state dict) goes through ``load_state_dict`` itself.

All or nothing: every check runs before the first byte is copied (a target the copy could fail
on, such as an expanded buffer or an inference tensor, goes through ``load_state_dict``), and an
error of ``load_state_dict`` leaves model and optimizer as they were. Only an interrupt or an
out-of-memory error during the copy itself can leave tensors partly loaded (the optimizer's
hyperparameters and state entries are then put back; no backup of the tensors is kept, which
would double the memory of a load). The states passed in must already be
verified (:meth:`~dacapo_store.weights_store.WeightsStore.load_weights` reads and checks both
parts before calling this).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from itertools import chain
from typing import Any

import torch

from ._torch_internals import has_load_pre_hooks, loads_plainly
from .staged_copies import copy_pairs

Pairs = list[tuple[torch.Tensor, torch.Tensor]]
"""(target already in the model or optimizer, loaded source) to copy."""


def load_into(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    model_state: Mapping[str, Any],
    optimizer_state: Mapping[str, Any] | None,
    transient: bool = False,
    optimizer_transient: bool | None = None,
) -> None:
    """Load ``model_state`` into ``model`` and ``optimizer_state`` (if not ``None``) into
    ``optimizer``, as ``load_state_dict`` of each would (see the module doc).

    ``transient=True`` says the loaded tensors view memory that must not outlive this call (a
    mapped payload file): whatever the optimizer keeps of them is copied into private memory, and
    a model that goes through ``load_state_dict`` is given private copies (a module may keep what
    it is given: ``set_extra_state``, its own ``_load_from_state_dict``, load hooks).
    ``optimizer_transient`` says the same of ``optimizer_state`` alone (default: ``transient``):
    ``False`` for an optimizer state in memory of its own lets the optimizer keep its tensors
    without a copy.

    Raises:
        RuntimeError, ValueError, KeyError...: as ``load_state_dict`` for states that do not fit
            (missing or unexpected keys, other shapes, other parameter groups); model and
            optimizer are then unchanged.
    """
    model_pairs = _model_pairs(model, model_state)
    optimizer_pairs: Pairs = []
    previous: dict[str, Any] | None = None
    if optimizer_state is not None:
        if optimizer is None:
            raise ValueError("an optimizer state was given but no optimizer to load it into")
        optimizer_transient = transient if optimizer_transient is None else optimizer_transient
        substituted, optimizer_pairs = _optimizer_plan(optimizer, optimizer_state, optimizer_transient)
        previous = {"state": optimizer.state, "param_groups": optimizer.param_groups}
        optimizer.load_state_dict(substituted)  # the state tensors kept from before still hold their old values
    try:
        if model_pairs is None:
            _load_model_state_dict(model, _private(model_state, transient))  # a module may keep what it is given
    except BaseException:
        if optimizer is not None and previous is not None:
            optimizer.__setstate__(previous)
        raise
    try:
        copy_pairs((model_pairs or []) + optimizer_pairs)
    except BaseException:  # an interrupt or out of memory: the checks above leave nothing else
        if optimizer is not None and previous is not None:
            optimizer.__setstate__(previous)
        raise


def _model_pairs(model: torch.nn.Module, state: Mapping[str, Any]) -> Pairs | None:
    """The copies that equal ``model.load_state_dict(state)``, or ``None`` where that cannot be
    shown: other keys, another shape, a value that is no tensor, a meta target, load hooks, a
    model class with its own ``load_state_dict`` or a module with its own ``_load_from_state_dict``."""
    if type(model).load_state_dict is not torch.nn.Module.load_state_dict:
        return None
    if not all(loads_plainly(module) for module in model.modules()):
        return None
    targets = model.state_dict(keep_vars=True)
    if set(targets) != set(state):
        return None
    pairs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    storages: dict[int, tuple] = {}
    for name, target in targets.items():
        source = state[name]
        if not (isinstance(target, torch.Tensor) and isinstance(source, torch.Tensor)):
            return None
        if target.shape != source.shape or not _copyable(target, source):
            return None
        view = _view_key(target)
        if storages.setdefault(view[0], view) != view:  # two keys view parts of one storage: order matters
            return None
        pairs.pop(view, None)  # a tied tensor: the last key wins, as in load_state_dict
        pairs[view] = (target.detach(), source)
    return list(pairs.values())


def _view_key(tensor: torch.Tensor) -> tuple:
    """What makes two tensors the same memory: storage, offset, shape, strides and dtype."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)


def _load_model_state_dict(model: torch.nn.Module, state: Mapping[str, Any]) -> None:
    """``model.load_state_dict(state)``, undone if it raises (it copies the tensors that fit
    before it reports those that do not)."""
    before = model.state_dict(keep_vars=True)
    backup = {name: value.detach().clone() for name, value in before.items() if isinstance(value, torch.Tensor)}
    try:
        model.load_state_dict(state)
    except BaseException:
        current = model.state_dict(keep_vars=True)
        for name, value in backup.items():
            target = current.get(name)
            if isinstance(target, torch.Tensor) and target.shape == value.shape and _non_overlapping(target):
                # an inference tensor's copy_ writes, then raises outside inference mode
                with torch.inference_mode(target.is_inference()), torch.no_grad():
                    target.copy_(value)
        raise


def _optimizer_plan(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any], transient: bool) -> tuple[dict, Pairs]:
    """A state dict for ``optimizer.load_state_dict`` in which each loaded tensor whose result
    tensor already exists (same shape, and the dtype and device ``load_state_dict`` would cast
    it to) is replaced by that existing tensor, and the copies that then fill those tensors.

    Raises:
        ValueError: the parameter groups do not fit the optimizer's, as ``load_state_dict`` says.
    """
    groups = optimizer.param_groups
    saved_groups = saved["param_groups"]
    if len(groups) != len(saved_groups):
        raise ValueError("loaded state dict has a different number of parameter groups")
    if any(len(group["params"]) != len(saved_group["params"]) for group, saved_group in zip(groups, saved_groups)):
        raise ValueError("loaded state dict contains a parameter group that doesn't match the size of optimizer's group")
    substituted = dict(saved)
    pairs: Pairs = []
    if (
        has_load_pre_hooks(optimizer)  # a hook may rewrite the state dict: no shortcut
        or type(optimizer).load_state_dict is not torch.optim.Optimizer.load_state_dict  # nor may an override
    ):
        substituted["state"] = _private(saved["state"], transient)
        return substituted, pairs
    substituted["param_groups"] = [_indexed(group) for group in saved_groups]
    params = dict(
        zip(
            chain.from_iterable(group["params"] for group in saved_groups),
            chain.from_iterable(group["params"] for group in groups),
        )
    )
    steps_on_device = {  # load_state_dict moves ``step`` to the parameter's device in these groups
        param_id: bool(group.get("fused", False) or group.get("capturable", False))
        for group in reversed(saved_groups)  # the first group naming a parameter wins
        for param_id in group["params"]
    }
    state: dict[Any, Any] = {}
    for key, entry in saved["state"].items():
        param = params.get(key)
        if param is None or not isinstance(entry, dict):
            state[key] = _private(entry, transient)
            continue
        existing = optimizer.state.get(param, {})
        on_device = steps_on_device.get(key, False)
        state[key] = {}
        for name, value in entry.items():
            target = existing.get(name)
            if isinstance(value, torch.Tensor) and _fits(target, value, param, name, on_device):
                state[key][name] = target
                pairs.append((target, value))
            else:
                state[key][name] = _private(value, transient)
    substituted["state"] = state
    return substituted, pairs


class _IndexedParams(list):
    """A saved parameter group's ``params``: a list whose ``in`` is a set lookup.

    ``Optimizer.load_state_dict`` finds the group of each state tensor's parameter by
    ``param_id in group["params"]``, a scan of the list: quadratic in the parameters (5,000
    parameters with Adam, 15,000 state tensors: 260 ms of a 600 ms load). The list is read only
    (``load_state_dict`` deep-copies the groups, as plain lists, and keeps the optimizer's own
    ``params``), so the set cannot go stale."""

    def __init__(self, ids: list) -> None:
        super().__init__(ids)
        self._members = frozenset(ids)

    def __contains__(self, item: object) -> bool:  # asked of state keys: hashable
        return item in self._members

    def __deepcopy__(self, memo: dict) -> list:
        return copy.deepcopy(list(self), memo)


def _indexed(group: Mapping[str, Any]) -> Mapping[str, Any]:
    """``group`` with its ``params`` an :class:`_IndexedParams` (``group`` itself where an id is
    unhashable: ``load_state_dict`` then refuses it with its own error)."""
    try:
        return {**group, "params": _IndexedParams(group["params"])}
    except TypeError:
        return group


def _fits(target: Any, value: torch.Tensor, param: torch.Tensor, name: Any, step_on_device: bool) -> bool:
    """Whether ``target`` already has the shape, dtype and device that ``load_state_dict``
    gives the loaded ``value`` (``torch.optim.Optimizer``'s documented casting: floating state
    follows the parameter's dtype and device, ``step`` stays as loaded unless fused or capturable)."""
    if not isinstance(target, torch.Tensor) or target is param or target.requires_grad or target.shape != value.shape:
        return False
    if not _copyable(target, value):
        return False
    if name == "step":
        dtype, device = (torch.float32, param.device) if step_on_device else (value.dtype, value.device)
    else:
        dtype = param.dtype if param.is_floating_point() else value.dtype
        device = param.device
    return target.dtype == dtype and target.device == device


def _copyable(target: torch.Tensor, source: torch.Tensor) -> bool:
    """Whether ``target.copy_(source)`` (same shapes) cannot fail but for an interrupt or lack of
    memory: plain strided tensors, a target that is no meta or (outside inference mode) inference
    tensor and in which no two elements share memory (not expanded)."""
    if target.layout != torch.strided or source.layout != torch.strided or target.is_quantized or source.is_quantized:
        return False
    if target.is_meta or source.is_meta or (target.is_inference() and not torch.is_inference_mode_enabled()):
        return False
    return _non_overlapping(target)


def _non_overlapping(tensor: torch.Tensor) -> bool:
    """Whether no two elements of ``tensor`` share memory (``False`` for an expanded tensor)."""
    if tensor.is_contiguous():
        return True
    reach = 1  # elements spanned by the dimensions of smaller strides
    for size, stride in sorted(((size, stride) for size, stride in zip(tensor.shape, tensor.stride()) if size > 1), key=lambda d: d[1]):
        if stride < reach:
            return False
        reach = stride * size
    return True


def _private(value: Any, transient: bool) -> Any:
    """``value`` with every tensor in it copied to private memory where ``transient``."""
    if not transient:
        return value
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        copied = copy.copy(value)  # keeps the mapping's type (OrderedDict, defaultdict...)
        for key, item in value.items():
            copied[key] = _private(item, transient)
        return copied
    if isinstance(value, (list, tuple)):
        return type(value)(_private(item, transient) for item in value)
    return value
