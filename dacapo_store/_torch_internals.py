"""The private torch APIs dacapo-store relies on, each behind one small function.

Every other module uses public torch APIs only (``tests/test_serialization.py`` scans the
package's source for private torch names outside this module). What is here has no public
equivalent with the same behaviour; each docstring says why, and how a change in torch shows:
all of these are attribute reads or calls, so a removed or renamed name raises ``AttributeError``
(``ImportError`` for :data:`_PLAIN_LOADS`, at import), never a silent change; a change of what
they mean is caught by the tests that compare background snapshots with synchronous stores byte
for byte (``tests/test_background.py``) and load shortcuts with ``load_state_dict``
(``tests/test_load_into.py``). Checked against torch 2.13.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.nn.modules.batchnorm import _NormBase


def storage_key(storage: torch.UntypedStorage) -> int:
    """The key by which ``torch.save`` tells storages apart (``storage._cdata``, the address of
    the storage's C++ object): views and tied weights share one, two storage objects over the
    same bytes get one each. ``data_ptr()`` merges the latter (and every empty storage), and
    ``id()`` is only as good as torch keeping one Python object per storage. Unique while the
    storage lives: callers hold every storage they keyed."""
    return storage._cdata


def untyped_storage(storage: torch.TypedStorage) -> torch.UntypedStorage:
    """The storage under a ``TypedStorage``, as ``torch.save`` reads it: the public
    ``storage.untyped()`` warns that ``TypedStorage`` is deprecated, which a store must not."""
    return storage._untyped_storage


def typed_storage(storage: torch.UntypedStorage, dtype: torch.dtype) -> torch.TypedStorage:
    """A ``TypedStorage`` of ``dtype`` over ``storage``, made as ``torch.load`` makes them: the
    public constructor warns that ``TypedStorage`` is deprecated."""
    return torch.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)


def tensor_pieces(tensor: torch.Tensor) -> tuple[Callable[..., torch.Tensor], tuple[Any, ...]]:
    """``(rebuild, pieces)``: ``rebuild(*pieces)`` is ``tensor`` as ``torch.load`` rebuilds it
    from what ``torch.save`` stores (for sparse, quantized, nested and meta tensors). The public
    ``tensor.__reduce_ex__(2)`` returns the same only for a plain tensor without Python
    attributes; otherwise it wraps the pieces, with the attributes, in a private rebuild
    function, and the attributes are the caller's to copy."""
    return torch.Tensor._reduce_ex_internal(tensor, 2)


def copy_lazy_bits(target: torch.Tensor, source: torch.Tensor) -> None:
    """Give ``target`` the lazy conjugate and negation bits of ``source``, as ``torch.load``
    restores what ``torch.save`` stores of them. ``is_conj()`` and ``is_neg()`` read them
    publicly, but only ``conj()`` sets one (as a new view), and nothing public sets the other."""
    metadata = torch._utils.get_tensor_metadata(source)
    if metadata:
        torch._utils.set_tensor_metadata(target, metadata)


def has_backward_hooks(tensor: torch.Tensor) -> bool:
    """Whether hooks are registered on ``tensor`` with ``register_hook`` (nothing public tells)."""
    return bool(tensor._backward_hooks)


_PLAIN_LOADS = (torch.nn.Module._load_from_state_dict, _NormBase._load_from_state_dict)
"""``_load_from_state_dict`` implementations that, given exactly the module's own keys with
matching shapes, do nothing but ``param.copy_(loaded)`` for each (BatchNorm's only adds a
missing ``num_batches_tracked``)."""


def loads_plainly(module: torch.nn.Module) -> bool:
    """Whether ``module``'s part of ``load_state_dict`` is :data:`_PLAIN_LOADS`' copies: no
    load_state_dict pre or post hooks registered, and its class's ``_load_from_state_dict``
    (which a module class overrides to load its own way) is torch's own. Nothing public lists
    the hooks or names the method."""
    if module._load_state_dict_pre_hooks or module._load_state_dict_post_hooks:
        return False
    return type(module)._load_from_state_dict in _PLAIN_LOADS


def has_load_pre_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether hooks that may rewrite a state dict are registered on ``optimizer`` with
    ``register_load_state_dict_pre_hook`` (nothing public lists them)."""
    return bool(optimizer._optimizer_load_state_dict_pre_hooks)
